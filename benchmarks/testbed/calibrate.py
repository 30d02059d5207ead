"""Calibrate the CPU test bed with method-independent controls (docs/testbed.md).

For each candidate configuration (dataset, victim, training length, data size, intensity
range), train the victim on clean data and on each class-wise control's poison (cw-uniform,
cw-hf, cw-mf, cw-lf) over several seeds, and record the final clean test accuracy, the shortcut
probe (ueb.probe) and the seconds per cell. A control counts as learned when the probe latched
in at least 2 of 3 seeds and its mean accuracy is at least 20 points below clean; a candidate
is a valid test bed when every control is learned and the clean row's std is <= 2 points. No
unlearnable method runs here: only the controls decide.

    OMP_NUM_THREADS=1 python benchmarks/testbed/calibrate.py run quick 300pc-600 --seeds 0 1 2
    python benchmarks/testbed/calibrate.py run textured --seeds 0 --poisoners clean cw-hf
    python benchmarks/testbed/calibrate.py table     # results/*.json -> results/table.md

One thread: on a shared 2-core machine two threads wait on each other whenever another job
holds a core (a 300-step cell took 497 s with two threads at load 7, 34 s with one at load 3).
Results go to benchmarks/testbed/results/<candidate>.json, rewritten after every cell, so an
interrupted run resumes where it stopped. Every candidate pins its whole protocol here; none
reads the quick profile, whose settings this calibration chooses.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ueb.artifacts import ArtifactStore
from ueb.imageset import ImageSet
from ueb.integrity import check_poison
from ueb.interfaces import RunContext
from ueb.params import parse_params
from ueb.probe import shortcut_probe
from ueb.profile import TrainingConfig
from ueb.progress import silent
from ueb.registry import get_registry, registry_provider
from ueb.training import Trainer

RESULTS = Path(__file__).parent / "results"
CONTROLS = ("clean", "cw-uniform", "cw-hf", "cw-mf", "cw-lf")

# The quick profile's protocol as it stood before this calibration (300 SGD steps).
BASE_TRAINING: dict[str, Any] = {
    "iterations": 300,
    "batch_size": 128,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "milestones": [180, 255],
    "gamma": 0.1,
    "crop_padding": 4,
    "flip": True,
    "eval_every": 100,
    "eval_batch_size": 1000,
    "precision": "fp32",
    "channels_last": False,
}


def steps(n: int) -> dict[str, Any]:
    """A run of n steps with the quick profile's schedule scaled: lr drops at 60% and 85%."""
    return {"iterations": n, "milestones": [round(0.6 * n), round(0.85 * n)], "eval_every": n // 3}


@dataclass(frozen=True)
class Candidate:
    note: str
    dataset: str = "fashion-mnist"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    victim: str = "fastnet"
    victim_params: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    train_per_class: int = 1000
    test_per_class: int = 200
    intensity: tuple[int, int] | None = None  # map 0..255 linearly onto this range

    def training_config(self) -> TrainingConfig:
        return parse_params(TrainingConfig, {**BASE_TRAINING, **self.training}, where="candidate")

    def describe(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "training": dataclasses.asdict(self.training_config())}


FULLRES = {"stem_pool": False}
SLIM_FULLRES = {"stem_pool": False, "stem_width": 8, "widths": [16, 64, 128]}
TEXTURED = "fashion-mnist-textured"

CANDIDATES: dict[str, Candidate] = {
    "quick": Candidate("the quick profile before this calibration: pooled-stem fastnet, 300 steps"),
    "fullres": Candidate("fastnet stem_pool=false, 300 steps", victim_params=FULLRES),
    "fullres-16-239": Candidate(
        "fastnet stem_pool=false, 300 steps, images mapped to [16, 239] (nothing clipped)",
        victim_params=FULLRES,
        intensity=(16, 239),
    ),
    "fullres-900": Candidate(
        "fastnet stem_pool=false, 900 steps (milestones x3)",
        victim_params=FULLRES,
        training=steps(900),
    ),
    "resnet18": Candidate(
        "resnet18 width 8, 300 steps", victim="resnet18", victim_params={"width": 8}
    ),
    "textured": Candidate("textured backgrounds, pooled fastnet, 300 steps", dataset=TEXTURED),
    "textured-slim": Candidate(
        "textured, slim full-resolution fastnet (stem 8, widths 16/64/128), 300 steps",
        dataset=TEXTURED,
        victim_params=SLIM_FULLRES,
    ),
    "slim-bs32-1200": Candidate(
        "slim full-resolution fastnet, batch 32, 1200 steps (the images of 300 steps at 128)",
        victim_params=SLIM_FULLRES,
        training={**steps(1200), "batch_size": 32},
    ),
    "slim-300pc-600": Candidate(
        "300 train images per class, slim full-resolution fastnet, 600 steps",
        victim_params=SLIM_FULLRES,
        train_per_class=300,
        training=steps(600),
    ),
    "300pc": Candidate(
        "300 train images per class, pooled fastnet, 300 steps", train_per_class=300
    ),
    "300pc-600": Candidate(
        "300 train images per class, pooled fastnet, 600 steps",
        train_per_class=300,
        training=steps(600),
    ),
    "200pc-900": Candidate(
        "200 train images per class, pooled fastnet, 900 steps",
        train_per_class=200,
        training=steps(900),
    ),
    # End-state study (docs/testbed.md): the chosen default's data and victim, evaluated every
    # 50 steps so that a metric over the last evaluations can be read off the same cells, under
    # the step schedule, cosine annealing to zero, and a three times longer cosine run.
    "300pc-600-e50": Candidate(
        "the quick default (300 per class, 600 steps, step schedule), evaluated every 50 steps",
        train_per_class=300,
        training={**steps(600), "eval_every": 50, "channels_last": True},
    ),
    "300pc-600-cos": Candidate(
        "300 per class, 600 steps, cosine annealed to zero, evaluated every 50 steps",
        train_per_class=300,
        training={**steps(600), "schedule": "cosine", "eval_every": 50, "channels_last": True},
    ),
    "300pc-1800-cos": Candidate(
        "300 per class, 1800 steps, cosine annealed to zero, evaluated every 150 steps",
        train_per_class=300,
        training={**steps(1800), "schedule": "cosine", "eval_every": 150, "channels_last": True},
    ),
}


# --------------------------------------------------------------------------- one cell


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def context(seed: int, training: TrainingConfig) -> RunContext:
    """A CPU RunContext for the poisoners (the controls read only the seed)."""
    return RunContext(
        seed=seed,
        device="cpu",
        artifacts=ArtifactStore(),  # the user's cache; the controls store nothing
        progress=silent(),
        training=training,
        provider=registry_provider(get_registry()),
        log=lambda _msg: None,
    )


def load_data(c: Candidate) -> tuple[ImageSet, ImageSet]:
    splits = get_registry().create("dataset", c.dataset, c.dataset_params).load(None)
    train = splits.train.first_per_class(c.train_per_class)
    test = splits.test.first_per_class(c.test_per_class)
    if c.intensity is not None:
        lo, hi = c.intensity
        train, test = (s.with_images(remap(s.images, lo, hi)) for s in (train, test))
    return train, test


def remap(images: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return (lo + images.float() * ((hi - lo) / 255)).round().to(torch.uint8)


def run_cell(
    c: Candidate, poisoner_name: str, seed: int, train: ImageSet, test: ImageSet
) -> dict[str, Any]:
    registry = get_registry()
    cfg = c.training_config()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    seed_everything(seed)
    poisoner = registry.create("poisoner", poisoner_name)
    output = poisoner.poison(train, context(seed, cfg))
    images, stats = check_poison(
        train, output, poisoner.budget(), poisoner.sample_wise, poisoner_name
    )
    poisoned = train.with_images(images)
    poison_s = time.perf_counter() - t0
    seed_everything(seed)
    model = registry.create("victim", c.victim, c.victim_params).build(
        train.num_classes, train.image_size, train.channels
    )
    result = Trainer(cfg, "cpu", seed).fit(model, poisoned, test)
    t1 = time.perf_counter()
    probe = shortcut_probe(model, train, poisoned, test, device="cpu", seed=seed)
    probe_s = time.perf_counter() - t1
    return {
        "poisoner": poisoner_name,
        "seed": seed,
        "final_acc": result.final_acc,
        "peak_acc": result.peak_acc,
        "history": result.history,
        "probe": probe,
        "poison_facts": {**stats, **poisoner.report()},
        "seconds": {"poison": poison_s, "train": result.seconds, "probe": probe_s},
        "cpu_seconds": time.process_time()
        - cpu0,  # all threads; less sensitive to load than wall time
    }


# --------------------------------------------------------------------------- driver


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> float:
    return os.getloadavg()[0]


def run(names: list[str], seeds: list[int], poisoners: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        c = CANDIDATES[name]
        path = RESULTS / f"{name}.json"
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc.update(
            candidate=name,
            config=c.describe(),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            cpus=os.cpu_count(),
        )
        doc.setdefault("runs", [])
        doc.setdefault("cells", [])
        done = {(cell["poisoner"], cell["seed"]) for cell in doc["cells"]}
        todo = [(p, s) for s in seeds for p in poisoners if (p, s) not in done]
        if not todo:
            print(f"{name}: nothing to do")
            continue
        train, test = load_data(c)
        session = {
            "date": datetime.date.today().isoformat(),
            "commit": git_commit(),
            "load_start": load_average(),
            "cells": len(todo),
        }
        doc["runs"].append(session)
        for p, s in todo:
            cell = run_cell(c, p, s, train, test)
            cell["load"] = load_average()
            cell["commit"] = session["commit"]
            doc["cells"].append(cell)
            session["load_end"] = load_average()
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            tmp.replace(path)
            sec = sum(cell["seconds"].values())
            pr = cell["probe"]
            print(
                f"{name:20s} {p:11s} seed {s}: {cell['final_acc']:6.2f}%  target_rate {pr['target_rate']:.2f}"
                f"  train_acc {pr['train_acc']:6.2f}  {sec:5.1f} s  load {cell['load']:.1f}",
                flush=True,
            )


# --------------------------------------------------------------------------- table


LEARNED_DROP = 20.0  # points below the clean mean that count as "well below clean"


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """Per poisoner: accuracies by seed, mean, std, probe rates, latch count, seconds per cell."""
    rows: dict[str, Any] = {}
    for p in CONTROLS:
        cells = sorted((c for c in doc["cells"] if c["poisoner"] == p), key=lambda c: c["seed"])
        if not cells:
            continue
        accs = [c["final_acc"] for c in cells]
        rows[p] = {
            "seeds": [c["seed"] for c in cells],
            "acc": accs,
            "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "target_rate": [c["probe"]["target_rate"] for c in cells],
            "train_acc": [c["probe"]["train_acc"] for c in cells],
            "latched": sum(bool(c["probe"]["latched"]) for c in cells),
            "seconds": [sum(c["seconds"].values()) for c in cells],
            "cpu_seconds": [c["cpu_seconds"] for c in cells if "cpu_seconds" in c],
        }
    return rows


def learned(rows: dict[str, Any], p: str) -> bool:
    """A control is learned when the probe latched in >= 2 of 3 seeds and the mean accuracy is
    at least LEARNED_DROP points below clean."""
    r, clean = rows[p], rows["clean"]
    return r["latched"] >= 2 and r["mean"] <= clean["mean"] - LEARNED_DROP


def verdict(rows: dict[str, Any]) -> str:
    """'valid' when the clean row is tight (std <= 2 over 3 seeds) and every control is learned."""
    if "clean" not in rows or any(len(r["acc"]) < 3 for r in rows.values()):
        return "screen (seed 0)" if all(r["seeds"] == [0] for r in rows.values()) else "partial"
    controls = [p for p in rows if p != "clean"]
    got = [p for p in controls if learned(rows, p)]
    if rows["clean"]["std"] <= 2.0 and len(got) == len(controls) == len(CONTROLS) - 1:
        return "valid"
    return f"not valid: learned {', '.join(got) or 'none'}"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    accs = " / ".join(f"{a:.1f}" for a in r["acc"])
    spread = f" ({r['mean']:.1f} ± {r['std']:.1f})" if len(r["acc"]) > 1 else ""
    rate = max(r["target_rate"])
    return f"{accs}{spread}, L {r['latched']}/{len(r['acc'])}, r≤{rate:.2f}"


def table() -> str:
    """Markdown: per candidate and control, final accuracy per seed, mean ± std, latch count (L)
    and the largest probe target rate (r); wall and CPU seconds per cell (medians)."""
    lines = [
        "| candidate | s/cell wall | CPU s/cell | load | " + " | ".join(CONTROLS) + " | verdict |",
        "|---|---:|---:|---:|" + "---|" * len(CONTROLS) + "---|",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        doc = json.loads(path.read_text())
        rows = summarise(doc)
        if not rows:
            continue
        wall = statistics.median(t for r in rows.values() for t in r["seconds"])
        cpu_all = [t for r in rows.values() for t in r["cpu_seconds"]]
        cpu = f"{statistics.median(cpu_all):.0f}" if cpu_all else "-"
        load = statistics.fmean(c["load"] for c in doc["cells"])
        cols = " | ".join(_cell(rows.get(p)) for p in CONTROLS)
        lines.append(
            f"| {doc['candidate']} | {wall:.0f} | {cpu} | {load:.1f} | {cols} | {verdict(rows)} |"
        )
    return "\n".join(lines) + "\n"


END_STATE = ("300pc-600-e50", "300pc-600-cos", "300pc-1800-cos")
TAIL = 4  # evaluations averaged by the tail metric (the last quarter of a 600-step run at 50)


def end_state_metrics(cell: dict[str, Any]) -> dict[str, float]:
    """One cell's candidate end-state metrics, read off its evaluation history."""
    accs = [h["acc"] for h in cell["history"]]
    return {
        "final": accs[-1],
        "tail": statistics.fmean(accs[-TAIL:]),
        "peak": max(accs),
        "drop": max(accs) - accs[-1],
    }


def _interval(values: list[float]) -> str:
    from ueb.stats import half_width

    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    sd = statistics.stdev(values)
    return f"{mean:.2f} ± {half_width(sd, len(values)):.2f} ({sd:.2f})"


def end_state() -> str:
    """Markdown: per end-state candidate and control, each metric's mean, std and 95% t
    half-width over the seeds run (ueb.stats), so the protocol is chosen by the controls."""
    lines = [
        "| candidate | poison | n | final: mean ± 95% (std) | last-4 mean: mean ± 95% (std) "
        "| peak - final (mean) | CPU s/cell |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for name in END_STATE:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        for p in CONTROLS:
            cells = [c for c in doc["cells"] if c["poisoner"] == p]
            if not cells:
                continue
            metrics = [end_state_metrics(c) for c in cells]
            n = len(cells)
            summary = {key: _interval([m[key] for m in metrics]) for key in ("final", "tail")}
            drop = statistics.fmean(m["drop"] for m in metrics)
            cpu = statistics.median(c["cpu_seconds"] for c in cells)
            lines.append(
                f"| {name} | {p} | {n} | {summary['final']} | {summary['tail']} "
                f"| {drop:.1f} | {cpu:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train the candidates' cells (resumes)")
    r.add_argument("candidates", nargs="+", choices=sorted(CANDIDATES))
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--poisoners", nargs="+", default=list(CONTROLS), choices=CONTROLS)
    sub.add_parser("table", help="write results/table.md from results/*.json")
    sub.add_parser("end-state", help="write results/end_state.md (the end-state candidates)")
    args = ap.parse_args(argv)
    os.environ.setdefault("UEB_PLUGINS", "ueb")
    if args.command == "end-state":
        text = end_state()
        (RESULTS / "end_state.md").write_text(text)
        sys.stdout.write(text)
        return
    if args.command == "run":
        run(args.candidates, args.seeds, args.poisoners)
    text = table()
    (RESULTS / "table.md").write_text(text)
    if args.command == "table":
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
