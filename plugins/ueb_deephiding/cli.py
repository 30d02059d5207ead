"""`ueb deephiding ...`: train a hider, generate unlearnable examples, reveal hidden images.

Each command builds the same RunContext the matrix runner does (profile, artifact cache,
progress) so a hider trained here is the artifact `ueb run` reuses. Torch is imported inside
the commands only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        "-p",
        help="Profile name or .toml path (its scale presets and [plugins.deephiding] apply)",
    ),
]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Registered dataset name")]
ParamOpt = Annotated[
    list[str] | None, typer.Option("--param", help="Poisoner parameter KEY=VALUE (repeatable)")
]
NameOpt = Annotated[
    str, typer.Option("--poisoner", help="deephiding (DH(C)) or deephiding-s (DH(S))")
]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Artifact cache (default: $UEB_CACHE or ~/.cache/ueb)"),
]
RootOpt = Annotated[Path | None, typer.Option("--data-root", help="Folder with dataset files")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, ...")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON object instead of a table")]


def _parse_kv(items: list[str] | None) -> dict[str, str]:
    from ueb.errors import ConfigError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--param '{item}' is not KEY=VALUE", "write e.g. --param mode=sample"
            )
        out[key.strip()] = value.strip()
    return out


def _setup(
    profile: str,
    dataset: str,
    poisoner: str,
    params: list[str] | None,
    cache_dir: Path | None,
    data_root: Path | None,
    device: str,
    seed: int = 0,
):
    from ueb.artifacts import ArtifactStore
    from ueb.interfaces import RunContext
    from ueb.plan_specs import SpecResolver, instantiate
    from ueb.profile import load_profile
    from ueb.progress import Progress
    from ueb.registry import get_registry, registry_provider
    from ueb.training import resolve_device

    prof = load_profile(profile)
    registry = get_registry()
    # The run's resolver: presets at the profile's scale < the profile < --param, bound to the
    # profile's training protocol and preflighted, exactly as `ueb run` resolves them.
    resolver = SpecResolver(registry, prof, {poisoner: _parse_kv(params)})
    dh = instantiate(registry, resolver.spec("poisoner", poisoner))
    splits = instantiate(registry, resolver.spec("dataset", dataset)).load(data_root)
    train = splits.train.first_per_class(prof.data.train_per_class)
    progress = Progress()
    ctx = RunContext(
        seed=seed,
        device=str(resolve_device(None if device == "auto" else device)),
        artifacts=ArtifactStore(cache_dir),
        progress=progress,
        training=prof.training,
        data_root=data_root,
        log=progress.log,
        provider=registry_provider(registry),
    )
    return dh, train, ctx


def _emit(title: str, facts: dict[str, Any], as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    if as_json:
        typer.echo(json.dumps(facts, indent=2, default=str))
        return
    table = Table(title=title, show_header=False)
    for k, v in facts.items():
        table.add_row(
            k,
            f"{v:.4g}"
            if isinstance(v, float)
            else json.dumps(v, default=str)
            if isinstance(v, (dict, list))
            else str(v),
        )
    Console().print(table)


def _guard(fn):
    """Run a command body, turning a UebError into one line on stderr and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ueb.errors import UebError

        try:
            return fn(*args, **kwargs)
        except UebError as exc:
            typer.echo(f"error: {exc.line()}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def build_app() -> typer.Typer:
    app = typer.Typer(
        no_args_is_help=True,
        help="Deep Hiding (Meng et al. 2024): hider training, generation, reveal",
    )

    @app.command()
    @_guard
    def train(
        dataset: DatasetOpt = "fashion-mnist",
        profile: ProfileOpt = "quick",
        poisoner: NameOpt = "deephiding",
        param: ParamOpt = None,
        cache_dir: CacheOpt = None,
        data_root: RootOpt = None,
        device: DeviceOpt = "auto",
        as_json: JsonOpt = False,
        seed: Annotated[int, typer.Option(help="Run seed (the hider is trained per seed)")] = 0,
    ) -> None:
        """Train (or resume, or reuse) the hider for a dataset and hidden-image bank; writes loss.png beside it."""
        dh, train_set, ctx = _setup(
            profile, dataset, poisoner, param, cache_dir, data_root, device, seed
        )
        _, _, facts = dh.prepare(train_set, ctx)
        facts["loss_plot"] = str(Path(facts["hider_path"]) / "loss.png")
        _emit("deephiding hider", facts, as_json)

    @app.command()
    @_guard
    def generate(
        out: Annotated[
            Path,
            typer.Option(
                "--out", "-o", help="Folder for images.npy, labels.npy, facts.json, preview.png"
            ),
        ],
        dataset: DatasetOpt = "fashion-mnist",
        profile: ProfileOpt = "quick",
        poisoner: NameOpt = "deephiding",
        param: ParamOpt = None,
        seed: Annotated[int, typer.Option(help="Run seed")] = 0,
        cache_dir: CacheOpt = None,
        data_root: RootOpt = None,
        device: DeviceOpt = "auto",
        as_json: JsonOpt = False,
    ) -> None:
        """Generate the unlearnable training set and save it (uint8 .npy) with its facts."""

        from ueb.imageset import quantize
        from ueb.integrity import check_poison

        dh, train_set, ctx = _setup(
            profile, dataset, poisoner, param, cache_dir, data_root, device, seed
        )
        images = dh.poison(train_set, ctx)
        u8, stats = check_poison(
            train_set, images, dh.budget(), dh.sample_wise, f"poisoner '{dh.name}'"
        )
        from ueb.atomic import save_npy, write_text

        save_npy(out / "images.npy", u8.numpy(), what="the poisoned images")
        save_npy(out / "labels.npy", train_set.labels.numpy(), what="the labels")
        facts = {**stats, **dh.report()}
        write_text(
            out / "facts.json", json.dumps(facts, indent=2, default=str), what="the poison's facts"
        )
        _save_grid(
            [
                train_set.uint8()[:8],
                quantize(images[:8]),
                _amplified(train_set.uint8()[:8], u8[:8]),
            ],
            out / "preview.png",
        )
        _emit(f"{dh.name} on {dataset}", {"out": str(out), **facts}, as_json)

    @app.command()
    @_guard
    def reveal(
        dataset: DatasetOpt = "fashion-mnist",
        profile: ProfileOpt = "quick",
        poisoner: NameOpt = "deephiding",
        param: ParamOpt = None,
        images: Annotated[
            Path | None,
            typer.Option(
                "--images",
                help="Unlearnable examples (.npy uint8 N,C,H,W, in training-set order); default: generate them",
            ),
        ] = None,
        count: Annotated[int, typer.Option("--count", "-n", help="How many images to reveal")] = 64,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", "-o", help="Write revealed.png (rows: unlearnable, revealed, hidden)"
            ),
        ] = None,
        seed: Annotated[
            int, typer.Option(help="Run seed: picks the hider and the poison, and the latent r")
        ] = 0,
        cache_dir: CacheOpt = None,
        data_root: RootOpt = None,
        device: DeviceOpt = "auto",
        as_json: JsonOpt = False,
    ) -> None:
        """Extract the hidden images from unlearnable examples (logo tracing, appendix A.2.9) and score them."""
        import numpy as np
        import torch

        from ueb.errors import DataError
        from ueb.imageset import quantize
        from ueb_deephiding.metrics import psnr, ssim

        dh, train_set, ctx = _setup(
            profile, dataset, poisoner, param, cache_dir, data_root, device, seed
        )
        net, groups, facts = dh.prepare(train_set, ctx)
        if images is not None:
            try:
                ue = torch.from_numpy(np.load(images))
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"cannot read {images}: {exc}",
                    "pass a .npy written by `ueb deephiding generate`",
                ) from exc
            if tuple(ue.shape) != tuple(train_set.images.shape):
                raise DataError(
                    f"{images} holds shape {tuple(ue.shape)}, the training set {tuple(train_set.images.shape)}",
                    "use the same dataset and profile",
                )
            ue = ue.float().div(255)
        else:
            ue = dh.poison(train_set, ctx)
        n = max(1, min(count, len(train_set)))
        sel = torch.linspace(0, len(train_set) - 1, n).long()
        idx = dh.hidden_index(train_set, groups.per_class)
        target = groups.images[train_set.labels[sel], idx[sel]].float().div(255)
        dev = torch.device(ctx.device)
        gen = torch.Generator().manual_seed(seed) if dev.type == "cpu" else None
        with torch.no_grad():
            _, revealed = net.reveal(quantize(ue[sel]).float().div(255).to(dev), generator=gen)
        revealed = revealed.clamp(0, 1).cpu()
        result = {
            "images": n,
            "reveal_psnr_db": psnr(revealed, target),
            "reveal_ssim": ssim(revealed, target),
            "chance_psnr_db": psnr(ue[sel], target),
            "hidden_source": facts["hidden_source"],
            "hider_artifact": facts["hider_artifact"],
        }
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            _save_grid(
                [quantize(ue[sel][:8]), quantize(revealed[:8]), quantize(target[:8])],
                out / "revealed.png",
            )
            result["png"] = str(out / "revealed.png")
        _emit("revealed hidden images", result, as_json)

    try:  # the SIG helper's commands (semantic-images, ...) live under this app too
        from ueb_sig.cli import add_commands
    except ImportError:
        pass
    else:
        add_commands(app)
    return app


def _amplified(clean, poisoned):
    import torch

    delta = poisoned.float() - clean.float()
    scale = delta.abs().flatten(1).amax(1).clamp_min(1)[:, None, None, None]
    return (delta / scale * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)


def _save_grid(rows, path: Path) -> None:
    import numpy as np
    from PIL import Image

    lines = []
    for row in rows:
        arr = row.numpy()
        if arr.shape[1] == 1:
            arr = np.repeat(arr, 3, axis=1)
        lines.append(np.concatenate(list(arr.transpose(0, 2, 3, 1)), axis=1))
    Image.fromarray(np.concatenate(lines, axis=0)).save(path)
