"""ueb's Trainer against a bare PyTorch loop: same model, data, batch, augmentation, device.

Target: the trainer costs at most 10% more than the bare loop (ratio of seconds <= 1.10).
The bare loop is what one writes by hand: uint8 data on the device, a permutation per epoch,
the same `random_crop_flip` batch augmentation, SGD + step schedule, cross-entropy, and one
evaluation at the end. So the ratio measures what the trainer adds around that work (hook
dispatch, Batch/StepContext objects, progress, bookkeeping, its evaluation path). A third
benchmark drops the augmentation, to show its share. Run:
    pytest benchmarks/bench_trainer.py --benchmark-enable
On a shared machine read `ratio_min` of test_trainer_overhead_ratio: both loops alternate
round by round there, so load hits them alike, and the minimum over rounds is compared.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest
import torch
import torch.nn.functional as F

from ueb.imageset import ImageSet
from ueb.profile import load_profile
from ueb.registry import get_registry
from ueb.training import Trainer, random_crop_flip

ITERATIONS = 30
BATCH = 128
TARGET = 1.10
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    train = ImageSet(
        torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=gen),
        torch.randint(0, 10, (4096,), generator=gen),
        tuple("abcdefghij"),
    )
    test = ImageSet(train.images[:1000].clone(), train.labels[:1000].clone(), train.classes)
    cfg = dataclasses.replace(
        load_profile("quick").training,
        iterations=ITERATIONS,
        batch_size=BATCH,
        eval_every=0,
        milestones=(ITERATIONS // 2,),
    )
    torch.manual_seed(0)
    model = get_registry().create("victim", "fastnet").build(10, 32)
    return cfg, model.state_dict(), train, test


def _fresh(state):
    torch.manual_seed(0)
    model = get_registry().create("victim", "fastnet").build(10, 32)
    model.load_state_dict(copy.deepcopy(state))
    return model


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def run_trainer(cfg, state, train, test) -> float:
    model = _fresh(state)
    _sync()
    start = time.perf_counter()
    Trainer(cfg, DEVICE, seed=0).fit(model, train, test)
    _sync()
    return time.perf_counter() - start


def run_bare(cfg, state, train, test, augment: bool = True) -> float:
    model = _fresh(state).to(DEVICE)
    _sync()
    start = time.perf_counter()
    images, labels = train.images.to(DEVICE), train.labels.to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    dev_gen = torch.Generator(device=DEVICE).manual_seed(1)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.gamma)
    model.train()
    perm, pos = torch.randperm(len(train), generator=gen), 0
    for _ in range(cfg.iterations):
        if pos + BATCH > len(train):
            perm, pos = torch.randperm(len(train), generator=gen), 0
        idx = perm[pos : pos + BATCH].to(DEVICE)
        pos += BATCH
        x = images[idx]
        if augment:
            x = random_crop_flip(x, cfg.crop_padding, cfg.flip, dev_gen)
        loss = F.cross_entropy(model(x.float() / 255), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        test_x, test_y = test.images.to(DEVICE), test.labels.to(DEVICE)
        correct = sum(
            int((model(test_x[i : i + 1000].float() / 255).argmax(1) == test_y[i : i + 1000]).sum())
            for i in range(0, len(test), 1000)
        )
    _sync()
    assert 0 <= correct <= len(test)
    return time.perf_counter() - start


def _images_per_s(benchmark) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["images_per_s"] = ITERATIONS * BATCH / stats.stats.mean


@pytest.mark.benchmark(group="trainer-vs-bare")
def test_trainer(benchmark, setup):
    benchmark.pedantic(run_trainer, args=setup, rounds=3, iterations=1, warmup_rounds=1)
    _images_per_s(benchmark)


@pytest.mark.benchmark(group="trainer-vs-bare")
def test_bare_loop(benchmark, setup):
    benchmark.pedantic(run_bare, args=setup, rounds=3, iterations=1, warmup_rounds=1)
    _images_per_s(benchmark)


@pytest.mark.benchmark(group="trainer-vs-bare")
def test_bare_loop_without_augmentation(benchmark, setup):
    benchmark.pedantic(
        run_bare, args=setup, kwargs={"augment": False}, rounds=3, iterations=1, warmup_rounds=1
    )
    _images_per_s(benchmark)


@pytest.mark.benchmark(group="trainer-overhead")
def test_trainer_overhead_ratio(benchmark, setup):
    """Alternate trainer and bare loop round by round; compare the fastest round of each."""
    rounds = 5
    run_trainer(*setup), run_bare(*setup)  # warm-up both
    trainer_s, bare_s = [], []

    def both() -> None:
        trainer_s.append(run_trainer(*setup))
        bare_s.append(run_bare(*setup))

    benchmark.pedantic(both, rounds=rounds, iterations=1)
    ratio = min(trainer_s) / min(bare_s)
    benchmark.extra_info.update(
        trainer_images_per_s=ITERATIONS * BATCH / min(trainer_s),
        bare_images_per_s=ITERATIONS * BATCH / min(bare_s),
        ratio_min=ratio,
        ratio_median=sorted(trainer_s)[len(trainer_s) // 2] / sorted(bare_s)[len(bare_s) // 2],
        device=DEVICE,
    )
    print(f"\ntrainer/bare seconds: {ratio:.3f} (target <= {TARGET}); {benchmark.extra_info}")
    assert ratio <= TARGET
