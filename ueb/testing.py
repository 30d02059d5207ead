"""Small, structured image sets for tests (shapes and colours per class, not pure noise)."""

from __future__ import annotations

import torch

from ueb.imageset import ImageSet


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


def write_cifar_archive(folder, per_class: int = 10, num_classes: int = 10, test_per_class: int = 5, seed: int = 0):
    """Write a small archive in the official CIFAR-10 "python version" format; returns its path.

    Same member names, pickle layout (bytes keys, uint8 rows of 3072) and compression as
    `cifar-10-python.tar.gz`, so the real loader is exercised end to end.
    """
    import io
    import pickle
    import tarfile
    from pathlib import Path

    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = make_imageset(per_class * 5, num_classes, 32, 3, seed)
    test = make_imageset(test_per_class, num_classes, 32, 3, seed + 1)
    rows = train.images.reshape(len(train), -1).numpy()
    labels = train.labels.numpy()
    perm = np.random.default_rng(seed).permutation(len(rows))
    rows, labels = rows[perm], labels[perm]
    members = {}
    for i, part in enumerate(np.array_split(np.arange(len(rows)), 5), start=1):
        members[f"data_batch_{i}"] = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": labels[part].tolist(), b"data": rows[part], b"filenames": [b"x.png"] * len(part)}
    members["test_batch"] = {b"batch_label": b"testing batch 1 of 1", b"labels": test.labels.tolist(), b"data": test.images.reshape(len(test), -1).numpy(), b"filenames": [b"x.png"] * len(test)}
    members["batches.meta"] = {b"label_names": [f"class{c}".encode() for c in range(num_classes)], b"num_cases_per_batch": len(rows) // 5, b"num_vis": 3072}
    path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path
