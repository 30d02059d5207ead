"""UC: Unlearnable Clusters (Zhang et al., CVPR 2023), after jiamingzhang94/Unlearnable-Clusters.

Label-agnostic: the labels are never read. The training set is split into `num_clusters`
clusters by K-means on the surrogate's image embeddings (preprocess.py, `data_cluster`); the
surrogate is CLIP's image encoder, loaded from a local folder. Then, for every cluster i, a
generator maps one fixed uniform-noise image to a perturbation delta_i (Linf `eps`), trained
so that *every* training image carrying delta_i has an embedding whose softmax matches that of
the centre of cluster (i + target_offset) mod K (KL divergence, main.py `train_gnet`). Each
image then gets its own cluster's perturbation. Settings and sources: docs/poisoners-clip.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, RunContext
from ueb.params import as_dict, bounded
from ueb.training import resolve_device

from . import clip_model as C
from .common import batches, cached_tensors, random_crop_flip
from .generators import NoiseGenerator


class UnlearnableClusters(Poisoner):
    """Cluster-wise generator noise from K-means on CLIP image embeddings, Linf 16/255."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "num_clusters": 3,
            "epochs": 1,
            "max_steps": 2,
            "batch_size": 16,
            "ngf": 4,
            "blocks": 1,
        },
        "quick": {"epochs": 1, "max_steps": 4, "batch_size": 16, "ngf": 16, "blocks": 2},
    }

    @dataclass(frozen=True)
    class Params:
        clip_path: str = ""  # folder with a saved CLIPModel + CLIPProcessor (required)
        eps: float = bounded(16 / 255, gt=0, le=1)
        num_clusters: int = bounded(10, ge=2)
        target_offset: int = bounded(1, ge=1)  # cluster i is pushed to centre (i + offset) mod K
        epochs: int = bounded(50, ge=1)  # generator epochs over the whole training set, per cluster
        max_steps: int | None = bounded(None, ge=1)  # per cluster; None: epochs x batches
        batch_size: int = bounded(256, ge=1)
        lr: float = bounded(1e-4, gt=0)
        weight_decay: float = bounded(5e-4, ge=0)
        lr_min: float = bounded(1e-6, ge=0)  # cosine annealing floor, per step
        ngf: int = bounded(64, ge=1)  # generator base width
        blocks: int = bounded(6, ge=0)  # generator residual blocks
        kmeans_init: int = bounded(10, ge=1)  # K-means restarts (scikit-learn n_init)

        def __post_init__(self) -> None:
            if self.target_offset % self.num_clusters == 0:
                raise ValueError(
                    "target_offset must not be a multiple of num_clusters (a cluster would keep its own centre)"
                )

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.params: UnlearnableClusters.Params = self.params
        self.facts: dict[str, Any] = {}
        self.assignment: torch.Tensor | None = None  # each image's cluster, after poison()

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    @property
    def sample_wise(self) -> bool:
        return True  # one perturbation per cluster, and clusters cut across classes

    def preflight(self) -> None:
        C.check_folder(self.params.clip_path, self.name)

    def input_identity(self) -> dict[str, Any]:
        return C.folder_identity(C.check_folder(self.params.clip_path, self.name))

    def report(self) -> dict[str, Any]:
        return dict(self.facts)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        p = self.params
        if len(train) < p.num_clusters:
            raise ConfigError(
                f"{self.name}: {len(train)} training images cannot form {p.num_clusters} clusters",
                f"set {self.name}.num_clusters to at most {len(train)}",
            )
        folder = C.check_folder(p.clip_path, self.name)
        dev = resolve_device(ctx.device)
        clip = C.load_clip(p.clip_path, self.name, dev)
        base = {
            "version": self.version,
            "clip": C.folder_identity(folder),
            "data": train.fingerprint(),
            "seed": ctx.seed,
        }
        cluster_recipe = {**base, "num_clusters": p.num_clusters, "kmeans_init": p.kmeans_init}
        clusters = cached_tensors(
            ctx, "uc-clusters", cluster_recipe, lambda: self._cluster(train, clip, ctx, dev)
        )
        recipe = {**base, "params": {k: v for k, v in as_dict(p).items() if k != "clip_path"}}
        made = cached_tensors(
            ctx,
            "uc-perturbations",
            recipe,
            lambda: self._perturbations(train, clip, clusters, ctx, dev),
        )
        assign = clusters["assign"].long()
        self.assignment = assign
        sizes = torch.bincount(assign, minlength=p.num_clusters).tolist()
        self.facts = {
            "cluster_sizes": sizes,
            "final_kl": [round(float(v), 6) for v in made["final_kl"]],
            "clip_embed_dim": clip.embed_dim,
            "clip_input": clip.crop,
        }
        return (train.float01() + made["delta"][assign]).clamp(0, 1)

    # ------------------------------------------------------------------------------ steps

    @torch.no_grad()
    def _cluster(
        self, train: ImageSet, clip: C.LocalCLIP, ctx: RunContext, dev: torch.device
    ) -> dict[str, torch.Tensor]:
        """K-means (k-means++ restarts seeded by the run) on the clean images' embeddings."""
        from sklearn.cluster import KMeans

        feats = embed_all(clip, train.float01(), self.params.batch_size, dev)
        km = KMeans(
            n_clusters=self.params.num_clusters,
            n_init=self.params.kmeans_init,
            random_state=ctx.seed,
        )
        assign = km.fit_predict(feats.double().numpy())
        return {
            "assign": torch.as_tensor(assign, dtype=torch.int64),
            "centres": torch.as_tensor(km.cluster_centers_, dtype=torch.float32),
        }

    def _perturbations(
        self,
        train: ImageSet,
        clip: C.LocalCLIP,
        clusters: dict[str, torch.Tensor],
        ctx: RunContext,
        dev: torch.device,
    ) -> dict[str, torch.Tensor]:
        p = self.params
        k = p.num_clusters
        x = train.float01()
        seeds = torch.randint(
            0, 2**62, (k, 3), generator=torch.Generator().manual_seed(ctx.seed)
        ).tolist()
        centres = clusters["centres"].to(dev)
        deltas, final = [], []
        with ctx.progress.task("UC cluster generators", total=k) as task:
            for i in range(k):
                target = centres[(i + p.target_offset) % k]
                delta, kl = self._train_generator(x, clip, target, seeds[i], dev)
                deltas.append(delta)
                final.append(kl)
                task.update(kl=kl)
                task.advance()
        return {"delta": torch.stack(deltas), "final_kl": torch.tensor(final)}

    def _train_generator(
        self,
        x: torch.Tensor,
        clip: C.LocalCLIP,
        target: torch.Tensor,
        seeds: list[int],
        dev: torch.device,
    ) -> tuple[torch.Tensor, float]:
        """One cluster's generator, trained on every training image; returns its delta (C, H, W)."""
        p = self.params
        init_seed, noise_seed, crop_seed = seeds
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            gen_net = NoiseGenerator(x.shape[1], p.ngf, p.blocks).to(dev)
        z = torch.rand(1, *x.shape[1:], generator=torch.Generator().manual_seed(noise_seed)).to(dev)
        crops = torch.Generator().manual_seed(crop_seed)
        per_epoch = -(-len(x) // p.batch_size)
        total = (
            p.epochs * per_epoch if p.max_steps is None else min(p.max_steps, p.epochs * per_epoch)
        )
        opt = torch.optim.Adam(gen_net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=p.epochs * per_epoch, eta_min=p.lr_min
        )
        anchor = target.softmax(-1)
        gen_net.train()  # the official code never switches it to eval, delta included
        step, kl = 0, float("nan")
        while step < total:
            for idx in batches(len(x), p.batch_size, None):  # the official loader is not shuffled
                if step >= total:
                    break
                images = random_crop_flip(x[idx], crops).to(dev)
                delta = gen_net(z).clamp(-p.eps, p.eps)
                feats = clip.image_features((images + delta).clamp(0, 1))
                loss = F.kl_div(
                    feats.log_softmax(-1), anchor.expand_as(feats), reduction="batchmean"
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step, kl = step + 1, float(loss.detach())
        with torch.no_grad():
            delta = gen_net(z).clamp(-p.eps, p.eps)[0]
        return delta.cpu(), kl


@torch.no_grad()
def embed_all(clip: C.LocalCLIP, x: torch.Tensor, batch: int, dev: torch.device) -> torch.Tensor:
    """CLIP image embeddings of every image, in order, on the CPU."""
    return torch.cat(
        [clip.image_features(x[i : i + batch].to(dev)).cpu() for i in range(0, len(x), batch)]
    )
