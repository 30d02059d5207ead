"""Where each class's global shape comes from: a real photograph and its canny edge map.

The paper conditions ControlNet on the canny map of the COCO image that the chosen caption
describes. We hold no COCO images, so by default the shapes come from the photographs that
scikit-image bundles (`skimage.data`, real photos shipped inside the wheel). Each class gets a
different source: whole photos first, then corner and centre crops, then their mirror images,
which gives more than 100 distinct shapes. Among the first k sources, classes and sources are
paired by the text similarity between the chosen prompt and a one-line description of the
photo (Hungarian assignment), so a shape fits its prompt where the pool allows.

A corpus line of the form `caption<TAB>image path` supplies the paper's pairing directly:
that caption's class then uses the canny map of its own image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ueb.errors import DataError

# (skimage.data function, description) - descriptions written for this project.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut", "an astronaut in a spacesuit standing in front of a flag"),
    ("camera", "a man with a camera on a tripod in a park"),
    ("chelsea", "a tabby cat looking to the side"),
    ("coffee", "a cup of coffee on a saucer with a spoon"),
    ("coins", "a set of old coins lying on a table"),
    ("horse", "the silhouette of a horse walking"),
    ("rocket", "a rocket standing on its launch pad"),
    ("stereo_motorcycle", "a motorcycle parked in a room"),
    ("page", "a printed page of text"),
    ("moon", "the surface of the moon with craters"),
    ("hubble_deep_field", "a starry sky full of distant galaxies"),
    ("retina", "a photograph of the back of an eye with blood vessels"),
    ("cell", "a living cell seen under a microscope"),
    ("immunohistochemistry", "a stained tissue sample seen under a microscope"),
    ("logo", "a snake logo drawn on a white background"),
    ("text", "handwritten and printed letters on paper"),
    ("clock", "a clock on a wall seen in motion"),
    ("colorwheel", "a round colour wheel"),
)

# Crops as (top, left, side) in fractions of the centred square of the photo.
_CROPS = (
    (0.0, 0.0, 1.0),
    (0.0, 0.0, 0.65),
    (0.0, 0.35, 0.65),
    (0.35, 0.0, 0.65),
    (0.35, 0.35, 0.65),
    (0.25, 0.25, 0.5),
)


@dataclass(frozen=True)
class ShapeSource:
    """One distinct global shape: a photo (or a user image), a crop of it, mirrored or not."""

    photo: str
    description: str
    crop: tuple[float, float, float]
    mirror: bool
    path: str | None = None

    def label(self) -> str:
        where = self.path or f"skimage.data.{self.photo}"
        crop = "" if self.crop == (0.0, 0.0, 1.0) else f" crop{self.crop}"
        return f"{where}{crop}{' mirrored' if self.mirror else ''}"


def builtin_pool(n: int) -> list[ShapeSource]:
    """The first `n` built-in shape sources, in a fixed order that varies the photo fastest."""
    pool = [
        ShapeSource(name, desc, crop, mirror)
        for mirror in (False, True)
        for crop in _CROPS
        for name, desc in PHOTOS
    ]
    if n > len(pool):
        raise DataError(
            f"{n} classes need {n} distinct shapes but the built-in photo pool has {len(pool)}",
            "give the corpus lines `caption<TAB>image path` so each class brings its own image",
        )
    return pool[:n]


def _load_photo(src: ShapeSource) -> np.ndarray:
    """The source image as uint8 RGB (H, W, 3)."""
    if src.path is not None:
        from PIL import Image

        p = Path(src.path)
        if not p.is_file():
            raise DataError(
                f"image {p} named in the prompt corpus does not exist", "fix the path after the TAB"
            )
        return np.asarray(Image.open(p).convert("RGB"))
    import skimage.data

    img = getattr(skimage.data, src.photo)()
    if isinstance(img, tuple):  # stereo pairs: the left view
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = (~img).astype(np.uint8) * 255  # horse: dark silhouette on white
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    return img.astype(np.uint8)


def source_image(src: ShapeSource, size: int) -> np.ndarray:
    """The cropped (and maybe mirrored) source as uint8 RGB of shape (size, size, 3)."""
    import cv2

    img = _load_photo(src)
    h, w = img.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    top, left, frac = src.crop
    s = max(8, int(round(side * frac)))
    y = y0 + int(round(side * top))
    x = x0 + int(round(side * left))
    img = img[y : y + s, x : x + s]
    if src.mirror:
        img = img[:, ::-1]
    interp = cv2.INTER_AREA if s >= size else cv2.INTER_CUBIC
    return np.ascontiguousarray(
        cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interp)
    )


def canny_map(rgb: np.ndarray, low: int = 100, high: int = 200, blur: float = 1.0) -> np.ndarray:
    """Binary canny edges (uint8, 0 or 255) of an RGB image, as ControlNet's canny model expects."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if blur > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur)
    return cv2.Canny(gray, low, high)


def assign_sources(
    prompt_embeddings: np.ndarray, sources: list[ShapeSource], description_embeddings: np.ndarray
) -> list[int]:
    """Pair class c with source perm[c], maximising total prompt/description similarity.

    `description_embeddings[i]` embeds `PHOTOS[i][1]` (normalised, same encoder as the prompts).
    """
    from scipy.optimize import linear_sum_assignment

    index = {name: i for i, (name, _) in enumerate(PHOTOS)}
    sim = prompt_embeddings @ description_embeddings[[index[s.photo] for s in sources]].T
    rows, cols = linear_sum_assignment(-sim)
    perm = [0] * len(rows)
    for r, c in zip(rows, cols, strict=True):
        perm[int(r)] = int(c)
    return perm
