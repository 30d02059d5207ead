"""14A: One for All, a universal generator for concept unlearnability (Chen, Zhang, Li, Han,
ICML 2024), after xiye7lai/UnlearnableConcept.

One generator, trained once on a labelled *source* dataset (ImageNet in the paper), is applied
to any training set without its labels. Training (train_gnet.py): the source's class names
become text concepts ("a photo of a {name}") embedded by CLIP's text encoder; for each concept
the `top_k` most similar concepts (itself included) and the least similar one are fixed. The
generator takes an image and its CLIP image embedding and outputs a perturbation rescaled to
L2 norm `eps`; its loss pulls the perturbed image's CLIP embedding towards the far concept's
text (`far_weight` / similarity) and away from the near ones (their mean similarity).
Application (unlearnable.py `generate`): every image gets G(image, its embedding), rescaled to
L2 `eps`. Settings and sources: docs/poisoners-clip.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import as_dict, bounded
from ueb.training import resolve_device

from . import clip_model as C
from .common import batches, cached_tensors, random_crop_flip
from .generators import ConceptGenerator

WNID = re.compile(r"^n\d{8}$")


class OneForAll(Poisoner):
    """A universal image-conditioned generator trained against CLIP text concepts, L2."""

    version = "1"
    # Smoke: enough steps (30) for the batch-norm running statistics the generator is applied
    # with to settle; with fewer, its eval-mode output hardly depends on the image.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "source": "fashion-mnist", "source_per_class": 2, "epochs": 6, "batch_size": 4,
            "ngf": 4, "blocks": 1,
        },
        "quick": {
            "source": "fashion-mnist-textured", "source_per_class": 20, "epochs": 2,
            "batch_size": 10, "ngf": 16, "blocks": 2,
        },
    }  # fmt: skip

    @dataclass(frozen=True)
    class Params:
        clip_path: str = ""  # folder with a saved CLIPModel + CLIPProcessor (required)
        source: str = "imagenet-subset"  # labelled dataset the generator is trained on
        concept_names: str = ""  # JSON: source class name (or ImageNet index) -> concept text
        prompt: str = "a photo of a {}"
        source_per_class: int | None = bounded(None, ge=1)  # None: every source image
        eps: float = bounded(16 / 7, gt=0)  # L2 norm on the data's images (16 at 224x224)
        top_k: int = bounded(3, ge=1)  # near concepts pushed away, the concept itself included
        far_weight: float = bounded(0.1, ge=0)  # weight of 1 / similarity to the far concept
        epochs: int = bounded(200, ge=1)
        max_steps: int | None = bounded(None, ge=1)  # None: epochs x batches
        batch_size: int = bounded(30, ge=1)
        lr: float = bounded(1e-3, gt=0)
        weight_decay: float = bounded(5e-4, ge=0)
        ngf: int = bounded(64, ge=1)  # generator base width
        blocks: int = bounded(24, ge=0)  # generator residual blocks at the bottleneck

        def __post_init__(self) -> None:
            if "{}" not in self.prompt:
                raise ValueError("prompt must contain {} where the concept name goes")

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.params: OneForAll.Params = self.params
        self.facts: dict[str, Any] = {}

    def budget(self) -> Budget:
        return Budget("l2", self.params.eps)

    def requires(self) -> list[Requirement]:
        return [Requirement("dataset", self.params.source)]

    def preflight(self) -> None:
        C.check_folder(self.params.clip_path, self.name)
        names = self.params.concept_names
        if names and not Path(names).expanduser().is_file():
            raise ConfigError(
                f"{self.name}: concept_names {names} is not a file",
                "point it at a JSON file mapping source class names to concept names "
                "(e.g. ImageNet's imagenet_class_index.json), or leave it empty",
            )

    def input_identity(self) -> dict[str, Any]:
        identity = C.folder_identity(C.check_folder(self.params.clip_path, self.name))
        if self.params.concept_names:
            identity["concept_names"] = self._concept_map()
        return identity

    def report(self) -> dict[str, Any]:
        return dict(self.facts)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        p = self.params
        folder = C.check_folder(p.clip_path, self.name)
        dev = resolve_device(ctx.device)
        clip = C.load_clip(p.clip_path, self.name, dev)
        source = ctx.plugin("dataset", p.source).load(ctx.data_root).train
        if p.source_per_class is not None:
            source = source.first_per_class(p.source_per_class)
        concepts = self.concepts(source.classes)
        if len(concepts) <= p.top_k:
            raise ConfigError(
                f"{self.name}: source '{p.source}' has {len(concepts)} concepts, not more than top_k={p.top_k}",
                f"use a source with more classes or set {self.name}.top_k below {len(concepts)}",
            )
        recipe = {
            "version": self.version,
            "clip": C.folder_identity(folder),
            "source": {"name": p.source, "data": source.fingerprint(), "concepts": concepts},
            "params": {
                k: v for k, v in as_dict(p).items() if k not in ("clip_path", "concept_names")
            },
            "seed": ctx.seed,
            "side": train.image_size,
            "channels": train.channels,
        }
        state = cached_tensors(
            ctx,
            "14a-generator",
            recipe,
            lambda: self._train(source, concepts, train, clip, ctx, dev),
        )
        net = ConceptGenerator(clip.embed_dim, train.channels, p.ngf, p.blocks).to(dev)
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("_")})
        self.facts = {
            "source": p.source,
            "source_images": len(source),
            "concepts": len(concepts),
            "steps": int(state["_steps"]),
            "final_loss": round(float(state["_loss"]), 6),
            "clip_embed_dim": clip.embed_dim,
        }
        return self._apply(net.eval(), train.float01(), clip, dev)

    # ------------------------------------------------------------------------------ concepts

    def concepts(self, classes: tuple[str, ...]) -> list[str]:
        """The concept text of each source class: its name, or what concept_names maps it to."""
        mapping = self._concept_map() if self.params.concept_names else {}
        names = [mapping.get(c, c) for c in classes]
        if all(WNID.match(n) for n in names):
            raise ConfigError(
                f"{self.name}: the classes of source '{self.params.source}' are WordNet ids "
                f"({names[0]}, ...), not concept names",
                f"set {self.name}.concept_names to ImageNet's imagenet_class_index.json "
                "(or any JSON mapping each id to its name)",
            )
        return [" ".join(n.replace("_", " ").split()) for n in names]

    def _concept_map(self) -> dict[str, str]:
        path = Path(self.params.concept_names).expanduser()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.name}: cannot read concept_names {path} ({exc})",
                "give a JSON object mapping class names to concept names",
            ) from exc
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{self.name}: concept_names {path} is not a JSON object",
                "map class names to names",
            )
        out: dict[str, str] = {}
        for key, value in raw.items():
            if isinstance(value, list) and len(value) == 2:  # {"0": ["n01440764", "tench"]}
                out[str(value[0])] = str(value[1])
            else:
                out[str(key)] = str(value)
        return out

    # ------------------------------------------------------------------------------ training

    def _train(
        self,
        source: ImageSet,
        concepts: list[str],
        train: ImageSet,
        clip: C.LocalCLIP,
        ctx: RunContext,
        dev: torch.device,
    ) -> dict[str, torch.Tensor]:
        p = self.params
        x = _resized(source.float01(), train.image_size, train.channels)
        y = source.labels.to(dev)
        text = F.normalize(clip.text_features([p.prompt.format(c) for c in concepts], dev), dim=-1)
        similarity = text @ text.T
        near = similarity.topk(p.top_k, dim=1).indices  # (concepts, top_k), itself first
        far = similarity.topk(1, dim=1, largest=False).indices[:, 0]
        init_seed, order_seed, crop_seed = torch.randint(
            0, 2**62, (3,), generator=torch.Generator().manual_seed(ctx.seed)
        ).tolist()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            net = ConceptGenerator(clip.embed_dim, train.channels, p.ngf, p.blocks).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs)  # per epoch
        order, crops = (
            torch.Generator().manual_seed(order_seed),
            torch.Generator().manual_seed(crop_seed),
        )
        per_epoch = -(-len(x) // p.batch_size)
        total = (
            p.epochs * per_epoch if p.max_steps is None else min(p.max_steps, p.epochs * per_epoch)
        )
        step, loss_value = 0, float("nan")
        net.train()
        with ctx.progress.task("14A generator", total=total) as task:
            for _ in range(p.epochs):
                for idx in batches(len(x), p.batch_size, order):
                    if step >= total:
                        break
                    images = random_crop_flip(x[idx], crops).to(dev)
                    adv = (images + self._delta(net, images, clip)).clamp(0, 1)
                    feats = F.normalize(clip.image_features(adv), dim=-1)
                    loss = self.concept_loss(feats, text, near[y[idx]], far[y[idx]])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step, loss_value = step + 1, float(loss.detach())
                    task.update(loss=loss_value)
                    task.advance()
                sched.step()
                if step >= total:
                    break
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        return {**state, "_steps": torch.tensor(step), "_loss": torch.tensor(loss_value)}

    def concept_loss(
        self, feats: torch.Tensor, text: torch.Tensor, near: torch.Tensor, far: torch.Tensor
    ) -> torch.Tensor:
        """far_weight / s(far) + mean over the top_k of s(near_j), where s(.) averages the
        similarity of every image of the batch to every image's concept text (the official
        loss takes the mean of the whole batch-by-batch matrix, not of its diagonal)."""
        p = self.params
        loss = p.far_weight * torch.reciprocal((feats @ text[far].T).mean())
        for j in range(p.top_k):
            loss = loss + (feats @ text[near[:, j]].T).mean() / p.top_k
        return loss

    def _delta(
        self, net: ConceptGenerator, images: torch.Tensor, clip: C.LocalCLIP
    ) -> torch.Tensor:
        """G(x, its normalised CLIP embedding), rescaled to L2 norm eps per image."""
        with torch.no_grad():
            embedding = F.normalize(clip.image_features(images), dim=-1)
        delta = net(images, embedding)
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return delta * (self.params.eps / norm)

    @torch.no_grad()
    def _apply(
        self, net: ConceptGenerator, x: torch.Tensor, clip: C.LocalCLIP, dev: torch.device
    ) -> torch.Tensor:
        out = []
        for i in range(0, len(x), self.params.batch_size):
            images = x[i : i + self.params.batch_size].to(dev)
            out.append((images + self._delta(net, images, clip)).clamp(0, 1).cpu())
        return torch.cat(out)


def _resized(x: torch.Tensor, side: int, channels: int) -> torch.Tensor:
    """Source images at the training set's side and channel count."""
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    if x.shape[-1] != side or x.shape[-2] != side:
        x = F.interpolate(
            x, size=(side, side), mode="bilinear", align_corners=False, antialias=True
        )
    return x.clamp(0, 1).contiguous()
