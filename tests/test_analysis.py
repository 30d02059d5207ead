"""Pictures of a run: PNG figures (`ueb plot`), Grad-CAM, and the self-contained HTML report."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from core_helpers import REPO, isolated_registry, minimal_plugins
from PIL import Image
from typer.testing import CliRunner

from ueb.plugins import set_host
from ueb.store import CellRecord, Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A real smoke matrix (clean + random-noise x identity, invert on the tiny victim), models saved."""
    from ueb.config import RunConfig
    from ueb.plan import resolve
    from ueb.progress import silent
    from ueb.runner import MatrixRunner

    registry = isolated_registry(minimal_plugins())
    root = tmp_path_factory.mktemp("analysis")
    cfg = RunConfig(
        poisoners=("random-noise",),
        countermeasures=("identity", "invert"),
        victims=("tiny",),
        profile="smoke",
        cache_dir=str(root / "cache"),
        save_models="all",
    )
    summary = MatrixRunner(
        resolve(cfg, registry), registry, root / "run", silent(), log=lambda m: None
    ).execute()
    assert summary.ok == 4
    yield root / "run"
    set_host(None)


def _cli(*args: str):
    from ueb.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_importing_the_cli_with_analysis_commands_loads_neither_torch_nor_matplotlib():
    code = "import sys, ueb.cli, ueb.analysis.commands; print(sorted(m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_plot_writes_every_figure_as_a_decodable_png(smoke_run, tmp_path):
    result = _cli(
        "plot", str(smoke_run), "--out", str(tmp_path), "--samples", "4", "--tsne-per-class", "8"
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [
        "gradcam_fashion-mnist_random-noise_tiny.png",
        "heatmap_fashion-mnist_tiny.png",
        "perturbations_fashion-mnist_random-noise.png",
        "tsne_fashion-mnist_random-noise_tiny.png",
    ]
    for name in names:
        img = _decode((tmp_path / name).read_bytes())
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        assert len(np.unique(np.asarray(img.convert("L")))) > 10  # drawn, not blank
    assert "skipped" not in result.output


def test_plot_only_selects_figures_and_rejects_unknown_kinds(smoke_run, tmp_path):
    assert (
        _cli(
            "plot", str(smoke_run), "--out", str(tmp_path), "--only", "heatmap,perturbations"
        ).exit_code
        == 0
    )
    assert sorted(p.name.split("_")[0] for p in tmp_path.glob("*.png")) == [
        "heatmap",
        "perturbations",
    ]
    from ueb.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown figure 'tsnee'"):
        _cli("plot", str(smoke_run), "--out", str(tmp_path), "--only", "tsnee")


def test_perturbation_grid_shows_the_stored_poison(smoke_run):
    """The grid's images are the cached poison minus the rebuilt clean subset, within the budget."""
    from ueb.analysis.figures import sample_indices
    from ueb.analysis.plots import amplified
    from ueb.analysis.rundata import RunData

    run = RunData.open(smoke_run)
    rec = next(r for r in run.ok() if r.poisoner == "random-noise")
    clean, poisoned = run.poisoned_pair(rec)
    delta = poisoned.float() - clean.uint8().float()
    assert 0 < delta.abs().max() <= 8  # random-noise is Linf 8/255
    idx = sample_indices(clean, 4)
    assert [int(clean.labels[i]) for i in idx] == [0, 1, 2, 3]
    amp = amplified(delta[idx].numpy())
    assert np.allclose(amp.reshape(4, -1).max(1), 1.0) and amp.min() >= 0
    assert np.allclose(amplified(np.zeros((1, 3, 4, 4))), 0.0)  # no perturbation: black, not NaN


def test_plot_skips_figures_whose_inputs_are_missing(tmp_path):
    """A run whose poisons left the cache and whose models were not saved: heatmap only, one note each."""
    run_dir = tmp_path / "run"
    store = Store(run_dir)
    store.set_manifest(
        config={
            "profile": "smoke",
            "datasets": ["fashion-mnist"],
            "poisoners": ["clean", "em"],
            "countermeasures": ["vanilla", "cutout"],
            "victims": ["fastnet"],
            "data": {"train_per_class": 5},
        },
        cache_root=str(tmp_path / "gone"),
    )
    for i, (p, c, acc) in enumerate(
        [
            ("clean", "vanilla", 90.0),
            ("clean", "cutout", 88.0),
            ("em", "vanilla", 12.0),
            ("em", "cutout", None),
        ]
    ):
        store.put(
            CellRecord(
                f"cell{i}",
                i,
                "fashion-mnist",
                p,
                c,
                "fastnet",
                0,
                status="ok" if acc else "error",
                final_acc=acc,
                peak_acc=acc,
                poison_facts={"key": f"k{p}"},
                error=None if acc else "boom",
            )
        )
    store.close()
    result = _cli("plot", str(run_dir), "--out", str(tmp_path / "png"))
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "png").glob("*.png")] == [
        "heatmap_fashion-mnist_fastnet.png"
    ]
    assert "em: images skipped: poison of em on fashion-mnist is not in the cache" in " ".join(
        result.output.split()
    )
    # the HTML report names what it skipped as plain text (no rich markup printed literally)
    html = _cli("html", str(run_dir), "--out", str(tmp_path / "report.html"))
    assert html.exit_code == 0, html.output
    assert "skipped: " in html.output and "[yellow]" not in html.output


def _two_blob_model():
    """Class 0 reads channel 0 only, class 1 channel 1 only: Grad-CAM must follow the channel."""
    from torch import nn

    from ueb.nn import Classifier

    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    model = Classifier(nn.Sequential(conv, nn.Flatten()), 2 * 8 * 8, 2)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[0, :64] = 1.0
        model.head.weight[1, 64:] = 1.0
    return model, conv


def test_grad_cam_follows_the_channels_the_explained_class_uses():
    from ueb.analysis.gradcam import grad_cam, last_conv

    model, conv = _two_blob_model()
    assert last_conv(model) is conv
    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, :3, :3] = 1.0  # channel 0: a blob top-left
    x[0, 1, 5:, 5:] = 1.0  # channel 1: a blob bottom-right
    for target, (hot, cold) in {
        0: ((slice(0, 3), slice(0, 3)), (slice(5, 8), slice(5, 8))),
        1: ((slice(5, 8), slice(5, 8)), (slice(0, 3), slice(0, 3))),
    }.items():
        cam = grad_cam(model, x, torch.tensor([target]))[0]
        assert cam.shape == (8, 8) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
        assert cam[hot].mean() > 0.9 and cam[cold].max() < 0.05
    assert model.training  # the model's mode is restored
    assert torch.equal(conv.weight.detach().view(2, 2), torch.eye(2))


def test_html_report_is_self_contained(smoke_run, tmp_path):
    target = tmp_path / "report.html"
    result = _cli(
        "html",
        str(smoke_run),
        "--out",
        str(target),
        "--samples",
        "4",
        "--only",
        "heatmap,perturbations,gradcam",
    )
    assert result.exit_code == 0, result.output
    page = target.read_text()
    assert '<table class="results">' in page and "random-noise" in page and "identity" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing loaded from anywhere
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3
    for data in images:
        assert _decode(base64.b64decode(data)).format == "PNG"
    assert torch.__version__ in page and "Manifest" in page  # versions and device come with it


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="headless Chromium is not installed (Debian package `chromium`; CI installs it)",
)
def test_html_report_renders_in_headless_chromium(smoke_run, tmp_path):
    assert CHROMIUM, (
        "CI is set but headless Chromium is not installed: .ci/run installs the Debian package `chromium`"
    )
    target = tmp_path / "report.html"
    assert (
        _cli(
            "html",
            str(smoke_run),
            "--out",
            str(target),
            "--only",
            "heatmap,perturbations",
            "--samples",
            "4",
        ).exit_code
        == 0
    )
    # A probe copy records, once the page has loaded, the decoded width of every image.
    probe = tmp_path / "probe.html"
    probe.write_text(
        target.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load', () => document.body.setAttribute('data-decoded', "
            "Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0).join(',')));</script></body>",
        )
    )
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<table class="results">' in dom.stdout and "<td>random-noise</td>" in dom.stdout
    decoded = re.search(r'data-decoded="([^"]*)"', dom.stdout)
    assert decoded, "the page's load event never fired"
    widths = [int(w) for w in decoded.group(1).split(",")]
    assert len(widths) == 2 and all(w > 100 for w in widths)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,900", target.as_uri()],
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(_decode(shot.read_bytes()).convert("L"))
    assert pixels.std() > 5  # something was painted


def test_heatmap_marks_missing_and_failed_cells(tmp_path, monkeypatch):
    from ueb.analysis.figures import heatmaps
    from ueb.analysis.rundata import RunData

    store = Store(tmp_path)
    store.put(CellRecord("a", 0, "d", "clean", "vanilla", "v", 0, status="ok", final_acc=91.0))
    store.put(CellRecord("b", 1, "d", "em", "vanilla", "v", 0, status="error", error="x"))
    store.put(CellRecord("c", 2, "d", "em", "cutout", "v", 0, status="ok", final_acc=14.5))
    store.put(CellRecord("e", 3, "d2", "em", "cutout", "v", 0, status="ok", final_acc=20.0))
    store.close()
    from ueb.analysis import plots

    drawn = []
    real = plots.heatmap

    def spy(values, rows, columns, texts, title):
        drawn.append((values.copy(), list(rows), list(columns), [list(t) for t in texts]))
        return real(values, rows, columns, texts, title)

    monkeypatch.setattr(plots, "heatmap", spy)
    figs = heatmaps(RunData.open(tmp_path))
    assert [f.name for f in figs] == ["heatmap_d_v", "heatmap_d2_v"]
    assert all(_decode(f.png).width > 50 for f in figs)
    values, rows, columns, texts = drawn[0]
    assert rows == ["clean", "em"] and columns == ["vanilla", "cutout"]
    assert texts == [["91.0", "-"], ["err", "14.5"]]  # the failed cell and the one never run
    assert np.isnan(values[0, 1]) and np.isnan(values[1, 0]) and values[1, 1] == 14.5


def test_seed_figure_draws_every_seed_and_marks_latched_ones(tmp_path):
    from ueb.analysis.figures import seed_figures
    from ueb.analysis.rundata import RunData
    from ueb.report import build_table, to_json

    store = Store(tmp_path)
    n = 0
    for seed, (clean, dh, latched) in enumerate(
        [(86.0, 30.0, True), (85.0, 80.0, False), (87.0, 35.0, True)]
    ):
        store.put(
            CellRecord(
                f"c{seed}", n, "d", "clean", "vanilla", "v", seed, status="ok", final_acc=clean
            )
        )
        store.put(CellRecord(f"p{seed}", n + 1, "d", "dh", "vanilla", "v", seed, status="ok", final_acc=dh,
                             probe={"latched": latched, "target_rate": 0.9 if latched else 0.1}))  # fmt: skip
        n += 2
    store.close()
    run = RunData.open(tmp_path)
    dh = next(r for r in build_table(run.records, "final").rows if r.poisoner == "dh")
    per_seed = [(s.seed, s.value, s.latched) for s in dh.cells["vanilla"].per_seed]
    assert per_seed == [(0, 30.0, True), (1, 80.0, False), (2, 35.0, True)]
    exported = json.loads(to_json(build_table(run.records, "final")))
    seeds = next(r for r in exported["rows"] if r["poisoner"] == "dh")["cells"]["vanilla"][
        "per_seed"
    ]
    assert [s["latched"] for s in seeds] == [True, False, True]
    figs = seed_figures(run)
    assert [f.name for f in figs] == ["seeds_d_v"] and _decode(figs[0].png).width > 100
    one_seed = tmp_path / "one"
    store = Store(one_seed)
    store.put(CellRecord("x", 0, "d", "clean", "vanilla", "v", 0, status="ok", final_acc=80.0))
    store.close()
    assert seed_figures(RunData.open(one_seed)) == []  # one seed: the heatmap says it all


def test_plot_of_a_directory_without_results_is_one_clear_error(tmp_path):
    from ueb.errors import UebError

    with pytest.raises(UebError, match="no results in"):
        _cli("plot", str(tmp_path))


@pytest.mark.parametrize("kinds", [["gradcam"], ["tsne"]])
def test_model_figures_are_skipped_with_a_note_when_no_model_was_saved(smoke_run, tmp_path, kinds):
    from ueb.analysis.figures import make_figures
    from ueb.analysis.rundata import RunData

    copy = tmp_path / "run"
    shutil.copytree(smoke_run, copy, ignore=shutil.ignore_patterns("models"))
    figs = make_figures(RunData.open(copy), kinds)
    assert figs.figures == []
    assert len(figs.notes) == 1 and "no saved model" in figs.notes[0]


def test_models_restore_to_the_saved_weights(smoke_run):
    from ueb.analysis.rundata import RunData

    run = RunData.open(smoke_run)
    rec = next(
        r for r in run.ok() if r.poisoner == "random-noise" and r.countermeasure == "identity"
    )
    clean = run.clean_train(rec.dataset)
    model = run.load_model(rec, clean)
    saved = torch.load(run.model_path(rec), weights_only=True)["state_dict"]
    state = model.state_dict()
    assert saved and set(saved) == set(state)  # every tensor saved, none left out of the check
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert not model.training
