"""Whole-set image operations for the data-stage countermeasures.

Every function takes an (N, C, H, W) tensor and works on all images at once: torch ops in
chunks for the filters, bit-depth reduction and grayscale, a thread pool around libjpeg-turbo
(simplejpeg, which releases the GIL) for JPEG. Outputs are uint8, as the reference pipelines
(PIL/OpenCV on 8-bit images) produce, unless a function says otherwise.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import numpy as np
import torch

from ueb.errors import ConfigError

# ITU-R BT.601 luma weights (what PIL's convert("L") and torchvision's Grayscale use).
ITU_R_601 = (0.299, 0.587, 0.114)

_CHUNK = 8192  # images per chunk: bounds the float32 working memory at 224x224


def _usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _chunks(n: int, size: int = _CHUNK) -> range:
    return range(0, n, size)


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images
    return images.detach().clamp(0, 1).mul(255.0).round_().to(torch.uint8)


def as_float01(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


# --------------------------------------------------------------------------- quantisation


def bit_depth_reduction(images: torch.Tensor, bits: int, mode: str = "posterize") -> torch.Tensor:
    """Keep `bits` bits per channel.

    "posterize" (torchvision's RandomPosterize(p=1), used by the ISS and APBench code) clears
    the low 8 - bits bits: levels 0, 64, 128, 192 at 2 bits. "uniform" (feature squeezing,
    Xu et al. 2018) rounds to 2**bits evenly spaced levels that include 0 and 255.
    """
    if not 1 <= bits <= 8:
        raise ConfigError(f"bit-depth reduction needs 1..8 bits, got {bits}")
    x = as_uint8(images)
    if mode == "posterize":
        mask = (0xFF << (8 - bits)) & 0xFF
        return torch.bitwise_and(x, mask)
    if mode == "uniform":
        levels = 2**bits - 1
        out = torch.empty_like(x)
        for i in _chunks(len(x)):
            v = x[i : i + _CHUNK].float().div_(255.0)
            out[i : i + _CHUNK] = (
                v.mul_(levels).round_().div_(levels).mul_(255.0).round_().to(torch.uint8)
            )
        return out
    raise ConfigError(f"unknown bit-depth reduction mode '{mode}'", "use 'posterize' or 'uniform'")


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 weighted sum of R, G, B replicated to every channel.

    In PIL's fixed-point form, (19595 R + 38470 G + 7471 B + 2^15) >> 16, so the result is
    bit-identical to PIL's convert("L") and torchvision's Grayscale on PIL images.
    """
    x = as_uint8(images)
    if x.shape[1] == 1:
        return x.clone()
    if x.shape[1] != 3:
        raise ConfigError(f"grayscale needs 1- or 3-channel images, got {x.shape[1]} channels")
    out = torch.empty_like(x)
    for i in _chunks(len(x), _SMALL):
        part = x[i : i + _SMALL].to(torch.int32)
        y = (part[:, 0] * 19595 + part[:, 1] * 38470 + part[:, 2] * 7471 + 32768) >> 16
        out[i : i + _SMALL] = y.to(torch.uint8)[:, None].expand(-1, 3, -1, -1)
    return out


# --------------------------------------------------------------------------- filters
# Small chunks keep each working tensor in cache; shifted slices (no convolution) make every
# filter a handful of elementwise passes.

_SMALL = 512


def _check_kernel(kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"filter kernel size must be odd and positive, got {kernel}")


def _pad(x: torch.Tensor, r: int, dim: int, mode: str) -> torch.Tensor:
    """Pad `r` pixels on both sides of `dim`: "reflect" is OpenCV's BORDER_REFLECT_101."""
    if r == 0:
        return x
    n = x.shape[dim]
    if mode == "reflect":
        if r >= n:
            raise ConfigError(f"filter radius {r} needs images larger than {n} px")
        before = x.narrow(dim, 1, r).flip(dim)
        after = x.narrow(dim, n - 1 - r, r).flip(dim)
    else:  # replicate
        shape = list(x.shape)
        shape[dim] = r
        before = x.narrow(dim, 0, 1).expand(shape)
        after = x.narrow(dim, n - 1, 1).expand(shape)
    return torch.cat([before, x, after], dim)


def _shifts(x: torch.Tensor, k: int, dim: int, mode: str) -> list[torch.Tensor]:
    """The k shifted views of `x` along `dim` that a k-tap filter combines."""
    xp = _pad(x, k // 2, dim, mode)
    n = x.shape[dim]
    return [xp.narrow(dim, j, n) for j in range(k)]


def _separable(x: torch.Tensor, k1d: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """Separable filter in float32 over shifted slices; returns float."""
    out = x
    for dim in (-2, -1):
        views = _shifts(out, len(k1d), dim, mode)
        acc = views[0] * float(k1d[0])
        for j in range(1, len(k1d)):
            acc.add_(views[j], alpha=float(k1d[j]))
        out = acc
    return out


def mean_filter(images: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Box filter (OpenCV `blur`: reflect-101 border), exact integer mean rounded to nearest."""
    _check_kernel(kernel)
    x = as_uint8(images)
    out = torch.empty_like(x)
    area = kernel * kernel
    # int16 holds 2 * sum + area for kernels up to 7 (2 * 49 * 255 + 49 < 2**15).
    acc_type = torch.int16 if kernel <= 7 else torch.int32
    for i in _chunks(len(x), _SMALL):
        s = x[i : i + _SMALL].to(acc_type)
        for dim in (-2, -1):
            views = _shifts(s, kernel, dim, "reflect")
            acc = views[0].clone()
            for v in views[1:]:
                acc.add_(v)
            s = acc
        # round(s / area) without ties: area is odd, so s / area is never k + 1/2.
        out[i : i + _SMALL] = torch.div(2 * s + area, 2 * area, rounding_mode="floor").to(
            torch.uint8
        )
    return out


def gaussian_kernel1d(kernel: int, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        raise ConfigError(f"Gaussian filter sigma must be positive, got {sigma}")
    t = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def gaussian_filter(images: torch.Tensor, kernel: int = 3, sigma: float = 0.1) -> torch.Tensor:
    """Gaussian smoothing as torchvision's GaussianBlur(kernel, sigma): reflect border, 8-bit out."""
    _check_kernel(kernel)
    k1d = gaussian_kernel1d(kernel, sigma)
    x = as_uint8(images)
    out = torch.empty_like(x)
    for i in _chunks(len(x), _SMALL):
        y = _separable(x[i : i + _SMALL].float(), k1d)
        out[i : i + _SMALL] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _sort2(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.minimum(a, b), torch.maximum(a, b)


def _median9(p: list[torch.Tensor]) -> torch.Tensor:
    """Median of nine tensors by a 19-exchange sorting network (Paeth's median-of-9)."""
    for i, j in (
        (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8),
        (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
    ):  # fmt: skip
        p[i], p[j] = _sort2(p[i], p[j])
    return p[4]


def median_filter(images: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Median filter (OpenCV `medianBlur`: replicated border), exact on 8-bit values."""
    _check_kernel(kernel)
    x = as_uint8(images)
    out = torch.empty_like(x)
    for i in _chunks(len(x), _SMALL):
        part = x[i : i + _SMALL]
        views = [
            v
            for row in _shifts(part, kernel, -2, "replicate")
            for v in _shifts(row, kernel, -1, "replicate")
        ]
        if kernel == 3:
            out[i : i + _SMALL] = _median9(views)
        else:
            out[i : i + _SMALL] = torch.stack(views, 0).median(0).values
    return out


# --------------------------------------------------------------------------- noise


def gaussian_noise(
    images: torch.Tensor, std: float, generator: torch.Generator, mean: float = 0.0
) -> torch.Tensor:
    """Add N(mean, std^2) noise per pixel, clamp to [0, 1]; float32 output (not re-quantised)."""
    x = as_float01(images).clone()
    for i in _chunks(len(x)):
        part = x[i : i + _CHUNK]
        noise = torch.randn(part.shape, generator=generator, device=generator.device).to(
            part.device
        )
        part.add_(noise, alpha=std).add_(mean).clamp_(0, 1)
    return x


# --------------------------------------------------------------------------- JPEG

JPEG_ENCODERS = ("opencv", "simplejpeg", "pil")


def _jpeg_opencv(img: np.ndarray, quality: int, subsampling: str) -> np.ndarray:
    import cv2

    factor = {
        "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
        "422": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
        "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    }[subsampling]
    flags = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor]
    if img.shape[2] == 1:
        _, data = cv2.imencode(".jpg", img[:, :, 0], flags)
        return cast(np.ndarray, cv2.imdecode(data, cv2.IMREAD_GRAYSCALE))[:, :, None]
    _, data = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), flags)  # OpenCV is BGR
    return cast(np.ndarray, cv2.imdecode(data, cv2.IMREAD_COLOR))[:, :, ::-1]


def _jpeg_simplejpeg(img: np.ndarray, quality: int, subsampling: str) -> np.ndarray:
    import simplejpeg

    if img.shape[2] == 1:
        data = simplejpeg.encode_jpeg(
            img, quality=quality, colorspace="GRAY", colorsubsampling="Gray"
        )
        return simplejpeg.decode_jpeg(data, colorspace="GRAY")
    data = simplejpeg.encode_jpeg(
        img, quality=quality, colorspace="RGB", colorsubsampling=subsampling
    )
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def _jpeg_pil(img: np.ndarray, quality: int, subsampling: str) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    pil.save(buf, "JPEG", quality=quality, subsampling={"444": 0, "422": 1, "420": 2}[subsampling])
    buf.seek(0)
    return np.asarray(Image.open(buf)).reshape(img.shape)


_ROUNDTRIP = {"opencv": _jpeg_opencv, "simplejpeg": _jpeg_simplejpeg, "pil": _jpeg_pil}


def jpeg_roundtrip_one(
    img: np.ndarray, quality: int, subsampling: str = "420", encoder: str = "opencv"
) -> np.ndarray:
    """Encode and decode one HWC uint8 image with the named library."""
    return _ROUNDTRIP[encoder](np.ascontiguousarray(img), quality, subsampling).reshape(img.shape)


def jpeg(
    images: torch.Tensor,
    quality: int,
    subsampling: str = "420",
    encoder: str = "opencv",
    workers: int = 0,
) -> torch.Tensor:
    """JPEG-compress and decompress every image; a thread pool over chunks of the set.

    The default encoder, OpenCV's libjpeg-turbo, gives output bit-identical to PIL's
    `save(..., "JPEG", quality=q)` (what the ISS and APBench reference code call), with
    PIL's default 4:2:0 chroma subsampling. simplejpeg is faster but its encoder's
    coefficients differ from PIL's (see docs/countermeasures.md). OpenCV and simplejpeg
    release the GIL, so threads scale; PIL is kept for comparison.
    """
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be within 1..100, got {quality}")
    if subsampling not in ("444", "422", "420"):
        raise ConfigError(f"unknown JPEG chroma subsampling '{subsampling}'", "use 444, 422 or 420")
    if encoder not in _ROUNDTRIP:
        raise ConfigError(
            f"unknown JPEG encoder '{encoder}'", f"use one of {', '.join(JPEG_ENCODERS)}"
        )
    x = as_uint8(images)
    if x.shape[1] not in (1, 3):
        raise ConfigError(f"JPEG needs 1- or 3-channel images, got {x.shape[1]} channels")
    hwc = x.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty_like(hwc)
    n = len(hwc)
    workers = workers or _usable_cores()
    one = _ROUNDTRIP[encoder]
    # A few chunks per worker keeps the pool balanced without per-image task overhead.
    step = max(1, math.ceil(n / (workers * 4)))

    def work(start: int) -> None:
        for j in range(start, min(n, start + step)):
            out[j] = one(hwc[j], quality, subsampling).reshape(hwc.shape[1:])

    if workers == 1 or n <= step:
        for s in range(0, n, step):
            work(s)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(0, n, step)))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
