"""Wall time of whole matrices: the smoke matrix over every registered poisoner and
countermeasure (target <= 3 minutes on 2 cores), measured once per benchmark run.

The quick main job (`ueb run --poisoner deephiding --countermeasures all`) takes minutes, so
it is timed by `benchmarks/time_main_job.sh` (cold and warm, with peak RSS), not here.
"""

from __future__ import annotations

from ueb.config import RunConfig
from ueb.plan import resolve
from ueb.plugins import set_host
from ueb.progress import silent
from ueb.registry import get_registry
from ueb.runner import MatrixRunner


def test_smoke_matrix_all_poisoners_all_countermeasures(benchmark, tmp_path):
    set_host(None)
    registry = get_registry()

    def run():
        d = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        cfg = RunConfig(
            poisoners=("all",),
            countermeasures=("all",),
            profile="smoke",
            cache_dir=str(d / "cache"),
            save_models="none",
        )
        return MatrixRunner(
            resolve(cfg, registry), registry, d / "run", silent(), log=lambda m: None
        ).execute()

    summary = benchmark.pedantic(run, rounds=1, iterations=1)
    assert summary.failed == 0
    benchmark.extra_info["cells"] = summary.ok
