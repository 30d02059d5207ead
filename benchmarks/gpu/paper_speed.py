"""Paper-profile speed on one GPU: what one Table I column costs in GPU-hours.

Measures, with ueb's own code on the embedded Fashion-MNIST data at 32x32 (nothing is read
from the network; outbound connections are refused in every process this script starts):

1. victims: each registered paper victim (resnet18 first, then resnet50, vgg19, densenet121,
   vit) trained by `ueb.training.Trainer` under the paper profile's protocol (batch 128, SGD)
   for a fixed number of iterations, in fp32 and in bf16 + channels_last; images/s and
   seconds per 1,000 iterations, median and spread over `--repeats` timed fits;
2. the 16-block Deep Hiding hider's training step (DeepHidingParams defaults: batch 24,
   growth 32, five dense layers, LFC on a width-64 ResNet-18, a checkpoint every 100 steps);
3. sharing: N processes each training resnet18 at once (a file barrier lines up their timed
   parts), from which cells per GPU-hour follow;
4. torch.compile on resnet18 (in a child process with a deadline), if the time budget allows;
5. the derived cost of one Table I column: 22 cells x 40,000 iterations of vanilla training.

Every section checks the time budget (`--budget`, 300 s by default: with start-up and imports
the script holds the device for under 6 minutes) and is recorded as skipped when it does not
fit. The JSON file is rewritten after every measurement, so a failure late in the script (a
missing tool, a killed process) loses nothing already measured. `--tiny` is the CPU smoke setting
(few iterations, small widths, 200 images) the test suite runs.

    python benchmarks/gpu/paper_speed.py --out paper_speed.json
    python benchmarks/gpu/paper_speed.py --tiny --out tiny.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA = "ueb-gpu-speed/1"
VICTIMS = ("resnet18", "resnet50", "vgg19", "densenet121", "vit")
TABLE1_CELLS = 22
PAPER_ITERATIONS = 40_000
MODES: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True, "compile": False},
    "bf16+channels_last+compile": {"precision": "bf16", "channels_last": True, "compile": True},
}
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Scale:
    """How much work each measurement does."""

    device: str
    tiny: bool
    iterations: int  # per timed fit
    warmup: int
    repeats: int
    batch_size: int
    train_per_class: int | None  # None: all 1,000 images per class
    test_images: int
    hider_iterations: int
    share_levels: tuple[int, ...]
    share_iterations: int
    budget_s: float

    def profile(self) -> str:
        return "smoke" if self.tiny else "paper"


def make_scale(args: argparse.Namespace) -> Scale:
    if args.tiny:
        return Scale(
            device=args.device or "cpu", tiny=True, iterations=args.iterations or 3, warmup=1,
            repeats=args.repeats or 2, batch_size=16, train_per_class=20, test_images=32,
            hider_iterations=4, share_levels=tuple(args.share or (2,)), share_iterations=12,
            budget_s=args.budget,
        )  # fmt: skip
    return Scale(
        device=args.device or "cuda", tiny=False, iterations=args.iterations or 100, warmup=30,
        repeats=args.repeats or 3, batch_size=128, train_per_class=None, test_images=500,
        hider_iterations=300, share_levels=tuple(args.share or (1, 2, 4, 8)), share_iterations=300,
        budget_s=args.budget,
    )  # fmt: skip


def refuse_network() -> None:
    """Make any outbound TCP/UDP connection fail in this process (the no-download rule)."""
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network access refused by {Path(__file__).name}: {address}")
        return original(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[key] = "1"


# --------------------------------------------------------------------------- pieces


def load_data(scale: Scale):
    from ueb.registry import get_registry

    splits = get_registry().create("dataset", "fashion-mnist").load(None)
    train = splits.train.first_per_class(scale.train_per_class)
    test = splits.test.subset(list(range(min(scale.test_images, len(splits.test)))))
    return train, test


def victim_params(name: str, scale: Scale) -> dict[str, Any]:
    """The victim's settings at this scale as a run resolves them: its preset, then the
    profile's table."""
    from ueb.profile import load_profile
    from ueb.registry import get_registry

    profile = load_profile(scale.profile())
    cls = get_registry().get("victim", name).load_class()
    preset = (getattr(cls, "presets", {}) or {}).get(profile.scale or profile.name, {})
    return {**preset, **profile.plugin_params(name)}


def training_config(scale: Scale, iterations: int, mode: str):
    from ueb.profile import load_profile

    m = MODES[mode]
    return dataclasses.replace(
        load_profile("paper").training, iterations=iterations, batch_size=scale.batch_size,
        milestones=(), eval_every=0, eval_batch_size=1000, precision=m["precision"],
        channels_last=m["channels_last"], compile=m["compile"],
    )  # fmt: skip


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_fit(model, train, test, scale: Scale, mode: str, iterations: int) -> tuple[float, dict]:
    """Wall seconds of one Trainer.fit (its single evaluation is one batch of `test`)."""
    from ueb.training import Trainer

    trainer = Trainer(training_config(scale, iterations, mode), scale.device, seed=0)
    sync(scale.device)
    start = time.perf_counter()
    result = trainer.fit(model, train, test)
    sync(scale.device)
    return time.perf_counter() - start, result.extra["protocol"]


def build_victim(name: str, scale: Scale, train):
    import torch

    from ueb.registry import get_registry

    torch.manual_seed(0)
    victim = get_registry().create("victim", name, victim_params(name, scale))
    return victim.build(train.num_classes, train.image_size, train.channels)


def summarise(seconds: list[float], iterations: int, batch: int) -> dict[str, Any]:
    per_k = [s / iterations * 1000 for s in seconds]
    med = statistics.median(per_k)
    return {
        "seconds_per_1000_iterations": med,
        "seconds_per_1000_iterations_each": per_k,
        "spread": (max(per_k) - min(per_k)) / med if med > 0 else 0.0,
        "images_per_s": batch * 1000 / med,
    }


def measure_victim(name: str, mode: str, train, test, scale: Scale) -> dict[str, Any]:
    model = build_victim(name, scale, train)
    t0 = time.perf_counter()
    timed_fit(model, train, test, scale, mode, scale.warmup)
    warm = time.perf_counter() - t0
    runs = [
        timed_fit(model, train, test, scale, mode, scale.iterations) for _ in range(scale.repeats)
    ]
    protocol = runs[-1][1]
    out = {
        "victim": name,
        "mode": mode,
        "params": victim_params(name, scale),
        "iterations": scale.iterations,
        "repeats": scale.repeats,
        "warmup_iterations": scale.warmup,
        "warmup_seconds": warm,
        "bf16": protocol["bf16"],
        "channels_last": protocol["channels_last_used"],
        "compiled": protocol["compiled"],
        **summarise([s for s, _ in runs], scale.iterations, scale.batch_size),
    }
    release(scale.device)
    return out


def release(device: str) -> None:
    import gc

    import torch

    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()


def measure_hider(train, scale: Scale) -> dict[str, Any]:
    """Seconds per training step of the paper-default hider, between two checkpoints."""
    import torch
    from ueb_deephiding.extractor import ConvFeatures
    from ueb_deephiding.hidden import next_class
    from ueb_deephiding.poisoner import DeepHiding, DeepHidingParams
    from ueb_deephiding.training import train_hider

    from ueb.registry import get_registry

    p = DeepHidingParams()
    if scale.tiny:
        p = dataclasses.replace(
            p, blocks=2, growth=8, batch_size=4, checkpoint_every=2, extractor_width=4, per_class=3
        )
    n = scale.hider_iterations
    cfg = dataclasses.replace(DeepHiding(p).hider_config(0), iterations=n)
    groups = next_class(train, p.per_class)
    torch.manual_seed(0)
    backbone = get_registry().create("victim", "resnet18", {"width": p.extractor_width})
    features = ConvFeatures(
        backbone.build(train.num_classes, train.image_size, train.channels), p.eps
    ).to(scale.device)
    stamps: dict[int, float] = {}

    def stamp(step: int) -> None:  # after a checkpoint's copy to the CPU, so the device is idle
        stamps[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as folder:
        train_hider(
            train,
            groups,
            cfg,
            Path(folder),
            features=features,
            device=scale.device,
            log=lambda _: None,
            after_checkpoint=stamp,
        )
    first, last = min(stamps), max(stamps)
    per_step = (stamps[last] - stamps[first]) / (last - first)
    release(scale.device)
    return {
        "blocks": p.blocks,
        "growth": p.growth,
        "dense_layers": p.dense_layers,
        "batch_size": p.batch_size,
        "lfc_extractor_width": p.extractor_width,
        "checkpoint_every": p.checkpoint_every,
        "timed_steps": last - first,
        "seconds_per_step": per_step,
        "seconds_per_1000_iterations": per_step * 1000,
        "paper_iterations": DeepHidingParams().iterations,
        "hours_for_paper_hider": per_step * DeepHidingParams().iterations / 3600,
    }


# --------------------------------------------------------------------------- child processes


def worker_main(spec: dict[str, Any]) -> None:
    """One cell's training in its own process: warm up, wait for the others, time a fit."""
    refuse_network()
    scale = Scale(**{**spec["scale"], "share_levels": tuple(spec["scale"]["share_levels"])})
    train, test = load_data(scale)
    model = build_victim(spec["victim"], scale, train)
    t0 = time.perf_counter()
    timed_fit(model, train, test, scale, spec["mode"], scale.warmup)
    warm = time.perf_counter() - t0
    barrier = Path(spec["barrier"])
    (barrier / f"ready-{spec['rank']}").touch()
    deadline = time.time() + 600
    while len(list(barrier.glob("ready-*"))) < spec["world"]:
        if time.time() > deadline:
            raise SystemExit("the other workers never became ready")
        time.sleep(0.05)
    begin = time.time()
    seconds, protocol = timed_fit(model, train, test, scale, spec["mode"], spec["iterations"])
    print(
        json.dumps(
            {
                "seconds": seconds,
                "begin": begin,
                "end": time.time(),
                "warmup_seconds": warm,
                "compiled": protocol["compiled"],
            }
        )
    )


def run_workers(
    world: int, victim: str, mode: str, iterations: int, scale: Scale, timeout: float
) -> list[dict[str, Any]]:
    """`world` workers at once; each returns its timed seconds and when it ran."""
    with tempfile.TemporaryDirectory() as barrier:
        procs = []
        for rank in range(world):
            spec = {
                "scale": dataclasses.asdict(scale),
                "victim": victim,
                "mode": mode,
                "iterations": iterations,
                "barrier": barrier,
                "rank": rank,
                "world": world,
            }
            env = {
                **os.environ,
                "OMP_NUM_THREADS": "1" if scale.tiny else os.environ.get("OMP_NUM_THREADS", "2"),
            }
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
            procs.append(
                subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
                )
            )
        results, end = [], time.time() + timeout
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1.0, end - time.time()))
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                raise TimeoutError(f"{world} worker(s) ran past {timeout:.0f} s") from None
            if proc.returncode != 0:
                raise RuntimeError(
                    f"worker failed ({proc.returncode}): {err.strip().splitlines()[-1] if err.strip() else ''}"
                )
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results


def measure_sharing(world: int, scale: Scale, timeout: float) -> dict[str, Any]:
    mode = "bf16+channels_last"
    res = run_workers(world, "resnet18", mode, scale.share_iterations, scale, timeout)
    per_k = [r["seconds"] / scale.share_iterations * 1000 for r in res]
    span = max(r["end"] for r in res) - min(r["begin"] for r in res)
    overlap = min(r["end"] for r in res) - max(r["begin"] for r in res)
    slowest = max(per_k)
    return {
        "processes": world,
        "victim": "resnet18",
        "mode": mode,
        "iterations": scale.share_iterations,
        "seconds_per_1000_iterations_each": per_k,
        "aggregate_images_per_s": sum(scale.batch_size * 1000 / s for s in per_k),
        "overlap_fraction": max(0.0, overlap) / span if span > 0 else 0.0,
        "cells_per_gpu_hour": world * 3600 / (slowest * PAPER_ITERATIONS / 1000),
    }


def measure_compile(scale: Scale, timeout: float) -> dict[str, Any]:
    mode = "bf16+channels_last+compile"
    (r,) = run_workers(1, "resnet18", mode, scale.iterations, scale, timeout)
    return {
        "victim": "resnet18",
        "mode": mode,
        "compiled": r["compiled"],
        "iterations": scale.iterations,
        "warmup_seconds_including_compilation": r["warmup_seconds"],
        **summarise([r["seconds"]], scale.iterations, scale.batch_size),
    }


# --------------------------------------------------------------------------- the run


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, what: str, need: float) -> bool:
        if self.left() >= need:
            return True
        self.skipped.append(f"{what}: {self.left():.0f} s left of the budget, {need:.0f} s needed")
        return False


class Sections:
    """Wall seconds per section of the run (where the budget went)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def environment(scale: Scale) -> dict[str, Any]:
    import torch

    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    cuda = scale.device.startswith("cuda")
    return {
        "date": datetime.date.today().isoformat(),
        "git": git.stdout.strip() if git.returncode == 0 else "",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "device_count": torch.cuda.device_count() if cuda else 0,
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "network": "refused",
    }


def table1_column(victims: list[dict[str, Any]], sharing: list[dict[str, Any]]) -> dict[str, Any]:
    """GPU-hours of 22 vanilla-cost cells x 40,000 iterations on resnet18."""
    r18 = [v for v in victims if v["victim"] == "resnet18"]
    out: dict[str, Any] = {
        "cells": TABLE1_CELLS,
        "iterations_per_cell": PAPER_ITERATIONS,
        "victim": "resnet18",
        "note": "victim training only, at vanilla cost; adversarial-training and multi-copy countermeasures cost more per iteration, poison generation is extra",
    }
    if r18:
        best = min(r18, key=lambda v: v["seconds_per_1000_iterations"])
        out["one_process"] = {
            "mode": best["mode"],
            "gpu_hours": TABLE1_CELLS
            * PAPER_ITERATIONS
            / 1000
            * best["seconds_per_1000_iterations"]
            / 3600,
        }
    if sharing:
        best_share = max(sharing, key=lambda s: s["cells_per_gpu_hour"])
        out["shared"] = {
            "processes": best_share["processes"],
            "gpu_hours": TABLE1_CELLS / best_share["cells_per_gpu_hour"],
        }
    return out


def run(scale: Scale, on_update: Any = None) -> dict[str, Any]:
    """All sections within the budget; `on_update(result so far)` after every measurement."""
    budget = Budget(scale.budget_s)
    clock = Sections()
    with clock("setup"):
        train, test = load_data(scale)
    victims: list[dict[str, Any]] = []
    hider: dict[str, Any] | None = None
    sharing: list[dict[str, Any]] = []
    compiled: dict[str, Any] | None = None

    def snapshot() -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "environment": environment(scale),
            "settings": {
                "profile": "paper protocol" + (" at smoke widths (tiny)" if scale.tiny else ""),
                "dataset": "fashion-mnist (embedded), 32x32 RGB",
                "train_images": len(train),
                "seed": 0,
                **dataclasses.asdict(scale),
            },
            "victims": victims,
            "deephiding_hider": hider,
            "sharing": sharing,
            "compile": compiled,
            "table1_column": table1_column(victims, sharing),
            "skipped": budget.skipped,
            "section_seconds": clock.seconds,
            "elapsed_s": time.perf_counter() - budget.start,
        }

    def measured() -> None:
        if on_update is not None:
            on_update(snapshot())

    order = [(v, m) for v in VICTIMS for m in ("fp32", "bf16+channels_last")]
    need_victim = 5 if scale.tiny else 30
    with clock("victims"):
        for name, mode in order[:2]:  # resnet18 first: the Table I column needs it
            if budget.allows(f"victim {name} {mode}", need_victim):
                victims.append(measure_victim(name, mode, train, test, scale))
                measured()
    with clock("deephiding_hider"):
        if budget.allows("deephiding hider", 5 if scale.tiny else 60):
            hider = measure_hider(train, scale)
            measured()
    with clock("sharing"):
        for world in scale.share_levels:
            need = (5 if scale.tiny else 40) + world * (2 if scale.tiny else 5)
            if budget.allows(f"sharing with {world} processes", need):
                sharing.append(measure_sharing(world, scale, timeout=budget.left() - 10))
                measured()
    with clock("victims"):
        for name, mode in order[2:]:
            if budget.allows(f"victim {name} {mode}", need_victim):
                victims.append(measure_victim(name, mode, train, test, scale))
                measured()
    with clock("compile"):
        if not scale.device.startswith("cuda"):
            budget.skipped.append("torch.compile on resnet18: the Trainer compiles on CUDA only")
        elif budget.allows("torch.compile on resnet18", 150):
            try:
                compiled = measure_compile(scale, timeout=budget.left() - 10)
            except (TimeoutError, RuntimeError) as exc:
                budget.skipped.append(f"torch.compile on resnet18: {exc}")
    return snapshot()


def record_gpu_sharing(cache_dir: Path | None, device: str, sharing: list[dict[str, Any]]) -> None:
    """What `ueb run --workers auto` reads on a GPU of this name (ueb.worker_count)."""
    from ueb.artifacts import default_cache_root
    from ueb.errors import UebError
    from ueb.numerics import accelerator_of
    from ueb.worker_count import record_sharing

    root = cache_dir or default_cache_root()
    name = accelerator_of("cuda", device)
    try:
        path = record_sharing(root, name, sharing, source="benchmarks/gpu/paper_speed.py")
    except UebError as exc:
        print(f"warning: cannot record GPU sharing under {root} ({exc.line()})", file=sys.stderr)
        return
    if path is not None:
        print(f"recorded sharing for {name} in {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("paper_speed.json"), help="JSON file to write")
    ap.add_argument(
        "--tiny", action="store_true", help="CPU smoke setting: few iterations, small widths"
    )
    ap.add_argument(
        "--device", default=None, help="cuda (default), cuda:N, or cpu (default with --tiny)"
    )
    ap.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="iterations per timed fit (default 100; tiny 3)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed fits per victim and mode (default 3; tiny 2)",
    )
    ap.add_argument(
        "--share",
        type=int,
        nargs="*",
        default=None,
        help="process counts sharing the GPU (default 1 2 4 8; tiny 2)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="seconds for the whole run; sections that do not fit are skipped",
    )
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="ueb cache that records how many processes share this GPU best, which `ueb run "
        "--workers auto` then uses (default: UEB_CACHE or ~/.cache/ueb)",
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return 0
    refuse_network()
    scale = make_scale(args)
    import torch

    if scale.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA device here (pass --tiny for the CPU smoke setting, or --device cpu)",
            file=sys.stderr,
        )
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(partial: dict[str, Any]) -> None:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(partial, indent=2))
        tmp.replace(args.out)  # whole or not at all
        if partial.get("sharing") and scale.device.startswith("cuda"):
            record_gpu_sharing(args.cache_dir, scale.device, partial["sharing"])

    result = run(scale, on_update=write)
    write(result)
    col = result["table1_column"]
    print(
        f"wrote {args.out} in {result['elapsed_s']:.0f} s; one Table I column: {json.dumps({k: col[k] for k in ('one_process', 'shared') if k in col})}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
