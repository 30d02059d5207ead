"""benchmarks/gpu/paper_speed.py in its CPU smoke setting: the JSON it writes and its arithmetic."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _channels_last_here() -> bool:
    from ueb.numerics import accelerator_of, channels_last_safe, kernel_environment

    return channels_last_safe("cpu", accelerator_of("cpu", "cpu"), kernel_environment())


CHANNELS_LAST_HERE = _channels_last_here()

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu" / "paper_speed.py"


def _module():
    """The script as a module (registered first: its dataclasses look their module up)."""
    if "paper_speed" in sys.modules:
        return sys.modules["paper_speed"]
    spec = importlib.util.spec_from_file_location("paper_speed", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["paper_speed"] = module
    spec.loader.exec_module(module)
    return module


def _positive(x) -> bool:
    return isinstance(x, int | float) and x > 0


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench") / "speed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {out}" in r.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_tiny_run_measures_every_victim_in_both_modes(tiny_result):
    ps = _module()
    d = tiny_result
    assert d["schema"] == ps.SCHEMA and d["settings"]["tiny"] is True
    assert d["environment"]["device"] == "cpu" and d["environment"]["network"] == "refused"
    assert d["environment"]["date"] and d["environment"]["torch"] == torch.__version__
    assert d["settings"]["train_images"] == 200 and d["settings"]["dataset"].startswith(
        "fashion-mnist"
    )
    got = {(v["victim"], v["mode"]) for v in d["victims"]}
    assert got == {(v, m) for v in ps.VICTIMS for m in ("fp32", "bf16+channels_last")}
    for v in d["victims"]:
        assert v["iterations"] == 3 and v["repeats"] == 2
        assert len(v["seconds_per_1000_iterations_each"]) == 2
        assert all(_positive(x) for x in v["seconds_per_1000_iterations_each"])
        assert _positive(v["seconds_per_1000_iterations"]) and _positive(v["images_per_s"])
        assert v["images_per_s"] == pytest.approx(16 * 1000 / v["seconds_per_1000_iterations"])
        assert v["spread"] >= 0 and v["bf16"] is (v["mode"] != "fp32")
        # channels_last where ueb.numerics says it is safe (AVX-512 CPUs too); compile: CUDA only
        assert v["channels_last"] is (v["mode"] != "fp32" and CHANNELS_LAST_HERE)
        assert v["compiled"] is False
    assert d["victims"][0]["victim"] == "resnet18" and d["victims"][0]["params"] == {"width": 8}


@pytest.mark.slow
def test_tiny_run_times_the_hider_and_shared_cells(tiny_result):
    d = tiny_result
    h = d["deephiding_hider"]
    assert h["blocks"] == 2 and h["batch_size"] == 4 and h["timed_steps"] == 2
    assert _positive(h["seconds_per_step"]) and _positive(h["hours_for_paper_hider"])
    assert h["hours_for_paper_hider"] == pytest.approx(h["seconds_per_step"] * 5000 / 3600)
    (share,) = d["sharing"]
    assert share["processes"] == 2 and len(share["seconds_per_1000_iterations_each"]) == 2
    assert all(_positive(x) for x in share["seconds_per_1000_iterations_each"])
    assert share["overlap_fraction"] > 0  # the two cells really trained at the same time
    slowest = max(share["seconds_per_1000_iterations_each"])
    assert share["cells_per_gpu_hour"] == pytest.approx(2 * 3600 / (slowest * 40))
    assert d["compile"] is None and any("compile" in s for s in d["skipped"])
    col = d["table1_column"]
    assert col["cells"] == 22 and col["iterations_per_cell"] == 40_000
    assert _positive(col["one_process"]["gpu_hours"]) and _positive(col["shared"]["gpu_hours"])
    assert set(d["section_seconds"]) == {
        "setup",
        "victims",
        "deephiding_hider",
        "sharing",
        "compile",
    }
    assert 0 < d["elapsed_s"] < d["settings"]["budget_s"]


def test_table1_column_arithmetic():
    ps = _module()
    victims = [
        {"victim": "resnet18", "mode": "fp32", "seconds_per_1000_iterations": 20.0},
        {"victim": "resnet18", "mode": "bf16+channels_last", "seconds_per_1000_iterations": 10.0},
        {"victim": "vgg19", "mode": "fp32", "seconds_per_1000_iterations": 1.0},
    ]
    sharing = [
        {"processes": 1, "cells_per_gpu_hour": 9.0},
        {"processes": 4, "cells_per_gpu_hour": 22.0},
    ]
    col = ps.table1_column(victims, sharing)
    # 22 cells x 40 thousand iterations x 10 s per thousand = 8,800 s
    assert col["one_process"] == {
        "mode": "bf16+channels_last",
        "gpu_hours": pytest.approx(8800 / 3600),
    }
    assert col["shared"] == {"processes": 4, "gpu_hours": pytest.approx(1.0)}
    assert set(ps.table1_column([], [])) == {"cells", "iterations_per_cell", "victim", "note"}


def test_budget_skips_what_does_not_fit():
    ps = _module()
    b = ps.Budget(10.0)
    assert b.allows("small", 1.0) and not b.allows("large", 60.0)
    assert len(b.skipped) == 1 and b.skipped[0].startswith("large:")


def test_network_is_refused(monkeypatch):
    ps = _module()
    monkeypatch.setattr(socket.socket, "connect", socket.socket.connect)  # restored afterwards
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, "0")
    ps.refuse_network()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s,
        pytest.raises(OSError, match=r"network access refused by paper_speed\.py") as refused,
    ):
        s.connect(
            ("127.0.0.1", 9)
        )  # a closed port: the system's own refusal would say "Connection refused"
    assert not isinstance(refused.value, ConnectionRefusedError)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="would run the full GPU benchmark")
def test_without_a_gpu_the_default_setting_stops_with_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and not (tmp_path / "x.json").exists()
    assert "--tiny" in r.stderr and len(r.stderr.strip().splitlines()) == 1
