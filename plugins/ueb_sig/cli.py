"""`ueb deephiding semantic-images | bank-grid | similarity`: SIG from the command line.

`add_commands(app)` attaches the commands to the Deep Hiding typer app. Nothing here imports
torch until a command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ueb.errors import UebError


def _context(device: str, seed: int, cache: Path | None, profile: str = "quick"):
    import torch

    from ueb.artifacts import ArtifactStore
    from ueb.interfaces import RunContext
    from ueb.profile import load_profile
    from ueb.progress import Progress
    from ueb.registry import get_registry, registry_provider

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    progress = Progress(enabled=sys.stderr.isatty())
    return RunContext(
        seed=seed,
        device=device,
        artifacts=ArtifactStore(cache),
        progress=progress,
        training=load_profile(profile).training,
        log=progress.log,
        provider=registry_provider(get_registry()),
    )


def _fail(exc: UebError) -> typer.Exit:
    typer.echo(f"error: {exc.line()}", err=True)
    return typer.Exit(2)


def _emit(data: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for k, v in data.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def semantic_images(
    out: Annotated[Path, typer.Option("--out", help="folder to write bank.npz + recipe.json into")],
    backend: Annotated[
        str,
        typer.Option(help="offline (no weights; an approximation) or diffusers (SD + ControlNet)"),
    ] = "offline",
    classes: Annotated[int, typer.Option("--classes", help="number of classes K")] = 10,
    per_class: Annotated[
        int, typer.Option("--per-class", help="images per class M (paper: 100)")
    ] = 100,
    size: Annotated[int, typer.Option("--size", help="image side in pixels")] = 32,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="caption corpus, one a line (or caption<TAB>image)"),
    ] = None,
    encoder: Annotated[
        str, typer.Option(help="text encoder for TPC: minilm (offline default) or clip")
    ] = "minilm",
    clip_model: Annotated[
        Path | None, typer.Option("--clip-model", help="local CLIP folder for --encoder clip")
    ] = None,
    sd_model: Annotated[
        Path | None,
        typer.Option("--sd-model", help="local Stable Diffusion folder (diffusers layout)"),
    ] = None,
    controlnet: Annotated[
        Path | None, typer.Option("--controlnet", help="local canny ControlNet folder")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps (diffusers)")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="images per pipeline call (diffusers)")
    ] = None,
    gen_size: Annotated[
        int | None, typer.Option("--gen-size", help="generation resolution (diffusers)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed for clustering and sampling")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    cache: Annotated[
        Path | None, typer.Option(help="artifact cache root (default $UEB_CACHE or ~/.cache/ueb)")
    ] = None,
) -> None:
    """Generate a semantic-image bank (TPC + canny-conditioned generation) and write it to --out."""
    from .bank import load_or_build_bank

    options: dict[str, Any] = {"encoder": encoder}
    if prompts is not None:
        options["prompts"] = str(prompts)
    if clip_model is not None:
        options["clip_model"] = str(clip_model)
    if backend == "diffusers":
        options.update(
            sd_model=None if sd_model is None else str(sd_model),
            controlnet=None if controlnet is None else str(controlnet),
        )
        for key, value in (("steps", steps), ("batch_size", batch_size), ("gen_size", gen_size)):
            if value is not None:
                options[key] = value
    elif any(v is not None for v in (sd_model, controlnet, steps, batch_size, gen_size)):
        raise _fail(
            UebError(
                "--sd-model/--controlnet/--steps/--batch-size/--gen-size apply to --backend diffusers only",
                "drop them or pass --backend diffusers",
            )
        )
    try:
        ctx = _context(device, seed, cache)
        bank = load_or_build_bank(
            ctx, classes, per_class, size, backend=backend, seed=seed, **options
        )
        bank.save(out)
    except UebError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"wrote {tuple(bank.images.shape)} bank ({bank.backend}, encoder {bank.encoder}, hash {bank.content_hash}) to {out}"
    )


def bank_grid(
    bank: Annotated[Path, typer.Argument(help="bank folder (bank.npz + recipe.json)")],
    out: Annotated[Path, typer.Option("--out", help="PNG file to write")] = Path("grid.png"),
    classes: Annotated[int, typer.Option("--classes", help="rows: the first N classes")] = 10,
    per_class: Annotated[
        int, typer.Option("--per-class", help="columns: the first N images of each class")
    ] = 10,
    cell: Annotated[int, typer.Option(help="pixel side of each tile")] = 64,
    edges: Annotated[
        bool, typer.Option(help="put each class's canny map in the first column")
    ] = True,
) -> None:
    """Write a PNG grid of a bank: one row per class."""
    from .bank import SemanticBank
    from .grid import write_grid

    try:
        b = SemanticBank.load(bank)
        write_grid(b, out, classes=classes, per_class=per_class, cell=cell, with_edges=edges)
    except UebError as exc:
        raise _fail(exc) from None
    typer.echo(f"wrote {out}")


def similarity(
    bank: Annotated[Path, typer.Argument(help="bank folder (bank.npz + recipe.json)")],
    victim: Annotated[str, typer.Option(help="feature network (a registered victim)")] = "resnet18",
    weights: Annotated[
        Path | None,
        typer.Option(help="state dict of a trained victim (default: untrained, seeded)"),
    ] = None,
    train_iterations: Annotated[
        int,
        typer.Option(
            "--train-iterations",
            help="first train the network on the bank itself for this many steps (paper: a trained ResNet-18)",
        ),
    ] = 0,
    profile: Annotated[
        str, typer.Option(help="profile whose training protocol --train-iterations uses")
    ] = "quick",
    seed: Annotated[
        int, typer.Option(help="seed of the network (initialisation and training)")
    ] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Intra-/inter-class cosine similarity of latent features (paper appendix A.2.7, Table J)."""
    from .bank import SemanticBank
    from .similarity import bank_similarity

    try:
        b = SemanticBank.load(bank)
        ctx = _context(device, seed, None, profile)
        result = bank_similarity(
            b, ctx, victim=victim, weights=weights, train_iterations=train_iterations
        )
    except UebError as exc:
        raise _fail(exc) from None
    _emit(
        {"bank": str(bank), "backend": b.backend, **result},
        as_json,
        "semantic-bank similarity (Table J)",
    )


def add_commands(app: typer.Typer) -> None:
    """Attach the SIG commands to the `ueb deephiding` app."""
    app.command("semantic-images")(semantic_images)
    app.command("bank-grid")(bank_grid)
    app.command("similarity")(similarity)
