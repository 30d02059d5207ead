"""Another machine, simulated on this one: does a cell's mean survive a change of numerics?

Two machines of one kind differ in how they compute, not in what: intra-op threads, the ISA
oneDNN may use, the memory layout of convolutions. This script runs a fixed cell set (the clean
row, DH(C) under vanilla training and JPEG-10, two class-wise calibration controls under vanilla) once
with the default numerics and once under each perturbation, each in a cache of its own (so
nothing is reused between them), and reports per cell whether the perturbed mean lies inside
the default run's 95% t-interval, and (the fairer test, since the perturbed mean is as noisy
as the default's) whether the difference of the two means lies inside its 95% Welch interval.

    python benchmarks/cross_machine.py [--profile quick] [--out DIR] [--workers 2]
        [--default-cache DIR]   # the default numerics' cells from an existing cache (a main job)

Perturbations: `threads-2` (two intra-op threads per process), `isa-avx2`
(ONEDNN_MAX_CPU_ISA=AVX2), `contiguous` (channels_last off). A cell whose perturbed mean
falls outside the default's interval is not robust to that change at this budget: the seeds
do not cover the floating-point path. The table goes to OUT/cross_machine.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# (poisoners, countermeasures) runs per variant: DH(C) under vanilla and JPEG-10, the controls
# under vanilla (each run adds the clean row).
GROUPS = (("deephiding", "vanilla,jpeg10"), ("cw-mf,cw-lf", "vanilla"))
PERTURBATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "threads-2": {"training": {"threads": 2}},
    "isa-avx2": {"env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}},
    "contiguous": {"training": {"channels_last": False}},
}


def profile_variant(profile: str, training: dict[str, Any], folder: Path) -> str:
    """A copy of `profile` with training settings changed (same name and scale presets)."""
    if not training:
        return profile
    path = Path(profile) if Path(profile).suffix else REPO / "ueb" / "profiles" / f"{profile}.toml"
    raw = tomllib.loads(path.read_text())
    raw.setdefault("scale", raw.get("name", path.stem))
    raw["training"] = {**raw.get("training", {}), **training}
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{path.stem}-{'-'.join(f'{k}{v}' for k, v in training.items())}.toml"
    out.write_text(_toml(raw))
    return str(out)


def _toml(data: dict[str, Any]) -> str:
    """Enough TOML for a profile: scalars, lists, and one level of tables (plus [plugins.X])."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if not isinstance(table, dict) or key == "plugins":
            continue
        lines += ["", f"[{key}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    for name, table in data.get("plugins", {}).items():
        lines += ["", f'[plugins."{name}"]', *(f"{k} = {value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def run_variant(name: str, spec: dict[str, Any], args: argparse.Namespace) -> list[Path]:
    folder = args.out / name
    profile = profile_variant(args.profile, spec.get("training", {}), folder)
    cache = folder / "cache"
    if name == "default" and args.default_cache is not None:
        cache = args.default_cache  # cells of the same profile and numerics, reused exactly
    env = {**os.environ, **spec.get("env", {}), "UEB_CACHE": str(cache)}
    runs = []
    start = time.perf_counter()
    for i, (poisoners, countermeasures) in enumerate(GROUPS):
        run_dir = folder / f"run-{i}"
        cmd = [sys.executable, "-m", "ueb.cli", "run", "-p", poisoners, "-c", countermeasures]
        cmd += ["--profile", profile, "--run-dir", str(run_dir), "-q"]
        cmd += ["--workers", str(args.workers)]
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(
                f"{name}: ueb run failed ({res.returncode}): {res.stderr.strip()[-500:]}"
            )
        runs.append(run_dir)
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return runs


def cells(run_dirs: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for run_dir in run_dirs:
        table = json.loads((run_dir / "table.json").read_text())
        for row in table["rows"]:
            for column, cell in row["cells"].items():
                out.setdefault((row["poisoner"], column), cell)
    return out


def compare(default: dict, perturbed: dict[str, dict]) -> list[dict[str, Any]]:
    from ueb.stats import difference_half_width

    rows = []
    for key, base in default.items():
        mean, hw = base.get("mean"), base.get("ci95")
        row: dict[str, Any] = {
            "poisoner": key[0],
            "countermeasure": key[1],
            "default": mean,
            "ci95": hw,
            "values": _values(base),
        }
        for name, cellset in perturbed.items():
            cell = cellset.get(key, {})
            other = cell.get("mean")
            inside = (
                None if mean is None or hw is None or other is None else abs(other - mean) <= hw
            )
            welch = (
                None
                if mean is None or other is None
                else difference_half_width(base.get("std"), base.get("n") or 0,
                                           cell.get("std"), cell.get("n") or 0)
            )  # fmt: skip
            row[name] = {
                "mean": other,
                "values": _values(cell),
                "inside": inside,
                "difference_hw": welch,
                "difference_inside": None if welch is None else abs(other - mean) <= welch,
            }
        rows.append(row)
    return rows


def _values(cell: dict[str, Any]) -> list[float]:
    return [p["value"] for p in cell.get("per_seed") or []]


def markdown(rows: list[dict[str, Any]], names: list[str], header: str) -> str:
    out = [
        header,
        "",
        "Each perturbed cell: its mean (inside the default's 95% t-interval? / difference",
    ]
    out += ["inside its 95% Welch interval?).", ""]
    out += ["| cell | default (95% CI) | " + " | ".join(names) + " |"]
    out.append("|---|---:|" + "---:|" * len(names))
    for r in rows:
        base = "-" if r["default"] is None else f"{r['default']:.2f} ± {r['ci95'] or 0:.2f}"
        parts = []
        for n in names:
            got = r[n]
            mark = {True: "in", False: "**out**", None: "?"}[got["inside"]]
            welch = {True: "in", False: "**out**", None: "?"}[got["difference_inside"]]
            parts.append("-" if got["mean"] is None else f"{got['mean']:.2f} ({mark} / {welch})")
        out.append(
            f"| {r['poisoner']} / {r['countermeasure']} | {base} | " + " | ".join(parts) + " |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--out", type=Path, default=Path("runs/cross-machine"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", help="comma list of perturbations (default: all)")
    ap.add_argument(
        "--default-cache",
        type=Path,
        help="UEB_CACHE whose cells serve the default numerics (e.g. the main job's)",
    )
    args = ap.parse_args()
    args.out = args.out.resolve()
    names = [n for n in PERTURBATIONS if n != "default"]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    # The perturbations first: with --default-cache the default's cells may still be filling.
    perturbed = {n: cells(run_variant(n, PERTURBATIONS[n], args)) for n in names}
    default = cells(run_variant("default", {}, args))
    rows = compare(default, perturbed)
    from ueb.numerics import cpu_model

    header = (
        f"Cross-machine check, profile {args.profile}, {time.strftime('%Y-%m-%d')}, "
        f"{cpu_model()}, {args.workers} workers: perturbed mean inside the default's 95% t-interval?"
    )
    text = markdown(rows, names, header)
    (args.out / "cross_machine.md").write_text(text)
    (args.out / "cross_machine.json").write_text(json.dumps(rows, indent=2))
    print(text)


if __name__ == "__main__":
    main()
