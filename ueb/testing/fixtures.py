"""Small data a test makes: structured synthetic images, dataset files in the layouts the
built-in datasets read, and a victim-shaped model in a few thousand parameters.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ueb.imageset import ImageSet

if typing.TYPE_CHECKING:
    from torch import nn


# --------------------------------------------------------------------------- small data


def make_imageset(
    per_class: int = 8,
    num_classes: int = 4,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
    name: str = "synthetic",
) -> ImageSet:
    """Each class: a bright square at a class-specific place and tint, on textured background.

    Learnable in a few steps (so training tests can assert accuracy moves) yet every image
    differs (so sample-wise checks are meaningful).
    """
    gen = torch.Generator().manual_seed(seed)
    n = per_class * num_classes
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = torch.rand(n, channels, size, size, generator=gen) * 0.35 + 0.1
    side = max(4, size // 4)
    for i in range(n):
        c = int(labels[i])
        row = (c * 7) % (size - side)
        col = (c * 13) % (size - side)
        jitter = torch.randint(-1, 2, (2,), generator=gen)
        r0 = int(max(0, min(size - side, row + int(jitter[0]))))
        c0 = int(max(0, min(size - side, col + int(jitter[1]))))
        tint = torch.linspace(0.5, 1.0, channels).roll(c % channels)
        x[i, :, r0 : r0 + side, c0 : c0 + side] = tint[:, None, None]
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, tuple(f"class{c}" for c in range(num_classes)), name)


def write_cifar_archive(
    folder, per_class: int = 10, num_classes: int = 10, test_per_class: int = 5, seed: int = 0
):
    """Write a small archive in the official CIFAR-10 "python version" format; returns its path.

    Same member names, pickle layout (bytes keys, uint8 rows of 3072) and compression as
    `cifar-10-python.tar.gz`, so the real loader is exercised end to end.
    """
    import numpy as np

    train = make_imageset(per_class * 5, num_classes, 32, 3, seed)
    test = make_imageset(test_per_class, num_classes, 32, 3, seed + 1)
    rows = train.images.reshape(len(train), -1).numpy()
    labels = train.labels.numpy()
    perm = np.random.default_rng(seed).permutation(len(rows))
    rows, labels = rows[perm], labels[perm]
    members = {}
    for i, part in enumerate(np.array_split(np.arange(len(rows)), 5), start=1):
        members[f"data_batch_{i}"] = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": labels[part].tolist(),
            b"data": rows[part],
            b"filenames": [b"x.png"] * len(part),
        }
    members["test_batch"] = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": test.labels.tolist(),
        b"data": test.images.reshape(len(test), -1).numpy(),
        b"filenames": [b"x.png"] * len(test),
    }
    members["batches.meta"] = {
        b"label_names": [f"class{c}".encode() for c in range(num_classes)],
        b"num_cases_per_batch": len(rows) // 5,
        b"num_vis": 3072,
    }
    return _write_tar(Path(folder), "cifar-10-python.tar.gz", "cifar-10-batches-py", members)


def write_cifar100_archive(
    folder: str | Path,
    per_class: int = 5,
    num_classes: int = 100,
    test_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write a small archive in the official CIFAR-100 "python version" format; returns its path.

    Members `train`, `test` and `meta` with fine and coarse labels, as `cifar-100-python.tar.gz`.
    """
    train = make_imageset(per_class, num_classes, 32, 3, seed)
    test = make_imageset(test_per_class, num_classes, 32, 3, seed + 1)

    def batch(part: ImageSet, label: bytes) -> dict[bytes, Any]:
        return {
            b"batch_label": label,
            b"fine_labels": part.labels.tolist(),
            b"coarse_labels": (part.labels // 5).tolist(),
            b"data": part.images.reshape(len(part), -1).numpy(),
            b"filenames": [b"x.png"] * len(part),
        }

    members = {
        "train": batch(train, b"training batch 1 of 1"),
        "test": batch(test, b"testing batch 1 of 1"),
        "meta": {
            b"fine_label_names": [f"class{c}".encode() for c in range(num_classes)],
            b"coarse_label_names": [f"super{c}".encode() for c in range(max(1, num_classes // 5))],
        },
    }
    return _write_tar(Path(folder), "cifar-100-python.tar.gz", "cifar-100-python", members)


def _write_tar(folder: Path, archive: str, inner: str, members: Mapping[str, Any]) -> Path:
    import io
    import pickle
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / archive
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{inner}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def write_image_folders(
    folder: str | Path,
    num_classes: int = 3,
    per_class: int = 5,
    val_per_class: int = 2,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """Write `train/<class>/*.png` and `val/<class>/*.png` (the ImageNet folder layout); returns `folder`."""
    from PIL import Image

    root = Path(folder)
    for split, n, offset in (("train", per_class, 0), ("val", val_per_class, 1)):
        images = make_imageset(n, num_classes, size, 3, seed + offset)
        for i in range(len(images)):
            label = int(images.labels[i])
            out = root / split / f"n{label:08d}"
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images.images[i].permute(1, 2, 0).numpy()).save(
                out / f"{split}_{i:05d}.png"
            )
    return root


def tiny_classifier(num_classes: int, in_channels: int = 3, width: int = 8) -> nn.Module:
    """A `ueb.nn.Classifier` small enough for unit tests (two convolutions, global pooling)."""
    from torch import nn

    from ueb.nn import Classifier

    backbone = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Classifier(backbone, width, num_classes)
