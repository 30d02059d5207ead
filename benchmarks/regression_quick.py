"""The slow tier of the regression check on numbers: every built-in poisoner and countermeasure
that `all` selects, on the `quick` profile (its three seeds), against the `quick-regression`
baseline. Hidden names (controls, variants, defences outside the main job) join by name.

Not run in CI: the matrix is many CPU hours (the Deep Hiding main job alone is 75 minutes on two
cores). The run directory resumes, so an interrupted check continues where it stopped.

    python benchmarks/regression_quick.py check            # run the matrix, then `ueb check`
    python benchmarks/regression_quick.py accept           # after an intended change: write the baseline
    python benchmarks/regression_quick.py check --dry-run  # print the commands only

A cell passes when its seed mean stays within max(--tolerance, the 95% Welch half-width of the
difference of the run's and the baseline's seed means), the rule of `ueb check`. Record the last
result, dated and with its commit, in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE_NAME = "quick-regression"
BASELINE = REPO / "benchmarks" / "baselines" / f"{BASELINE_NAME}.json"
TOLERANCE = 3.0  # points: floor for cells whose seeds agree (another CPU's floating point)


def commands(args: argparse.Namespace) -> list[list[str]]:
    """The `ueb` command lines of the chosen action, in order."""
    ueb = [sys.executable, "-m", "ueb.cli"]
    run = [*ueb, "run", "-p", args.poisoners, "-c", args.countermeasures, "--profile", "quick"]
    run += ["--run-dir", str(args.run_dir), "-q"]
    if args.workers:
        run += ["--workers", args.workers]
    if args.action == "accept":
        after = ["baseline", "accept", str(args.run_dir), "--name", BASELINE_NAME]
        after += ["--tolerance", f"{args.tolerance:g}"]
    else:
        after = ["check", str(args.run_dir), "--baseline", str(BASELINE)]
    return [run, [*ueb, *after]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("check", "accept"), nargs="?", default="check")
    parser.add_argument("--poisoners", default="all", help="ueb -p selection (default: all)")
    parser.add_argument("--countermeasures", default="all", help="ueb -c selection (default: all)")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "regression-quick")
    parser.add_argument("--workers", default="", help="ueb --workers (default: ueb's auto)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="with accept")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    if args.action == "check" and not BASELINE.exists() and not args.dry_run:
        print(
            f"error: no baseline {BASELINE.relative_to(REPO)} yet; "
            "fix: run `python benchmarks/regression_quick.py accept` on a trusted commit",
            file=sys.stderr,
        )
        return 2
    for cmd in commands(args):
        print("$ " + shlex.join(["ueb", *cmd[3:]]))
        if args.dry_run:
            continue
        code = subprocess.call(cmd, cwd=REPO)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
