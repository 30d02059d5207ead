"""SVHN and Tiny-ImageNet from small files in the official layouts, and their error lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ueb.errors import ConfigError, DataError
from ueb.registry import get_registry
from ueb.testing import check_dataset, make_imageset


def write_svhn_files(
    folder: Path, per_class: int = 3, test_per_class: int = 2, seed: int = 0
) -> Path:
    """`train_32x32.mat` and `test_32x32.mat` as published: X (32, 32, 3, N) uint8, y (N, 1)
    with labels 1..10 (10 is the digit 0)."""
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    for name, n, offset in (
        ("train_32x32.mat", per_class, 0),
        ("test_32x32.mat", test_per_class, 1),
    ):
        part = make_imageset(n, 10, 32, 3, seed + offset)
        digits = part.labels.numpy()
        official = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        x = part.images.numpy().transpose(2, 3, 1, 0)  # (N, C, H, W) -> (H, W, C, N)
        scipy.io.savemat(folder / name, {"X": x, "y": official})
    return folder


def write_tiny_imagenet(
    folder: Path, num_classes: int = 3, per_class: int = 4, val_per_class: int = 2, seed: int = 0
) -> Path:
    """`tiny-imagenet-200/` with wnids.txt (unsorted, as published), train/<wnid>/images/*.JPEG,
    val/images/*.JPEG and val/val_annotations.txt; returns the folder holding it."""
    from PIL import Image

    base = folder / "tiny-imagenet-200"
    wnids = [f"n{9_000_000 - 17 * c:08d}" for c in range(num_classes)]  # descending: order matters
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    train = make_imageset(per_class, num_classes, 64, 3, seed)
    for i in range(len(train)):
        wnid = wnids[int(train.labels[i])]
        out = base / "train" / wnid / "images"
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(train.images[i].permute(1, 2, 0).numpy()).save(
            out / f"{wnid}_{i}.JPEG", quality=95
        )
    val = make_imageset(val_per_class, num_classes, 64, 3, seed + 1)
    lines = []
    for i in range(len(val)):
        name = f"val_{i}.JPEG"
        Image.fromarray(val.images[i].permute(1, 2, 0).numpy()).save(
            base / "val" / "images" / name, quality=95
        )
        lines.append(f"{name}\t{wnids[int(val.labels[i])]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return folder


def _dataset(name: str, **params):
    return get_registry().create("dataset", name, params)


# --------------------------------------------------------------------------- svhn


def test_svhn_reads_the_official_mat_files_and_maps_label_10_to_digit_0(tmp_path):
    root = write_svhn_files(tmp_path, per_class=3, test_per_class=2)
    splits = check_dataset(_dataset("svhn"), root=root)
    expected = make_imageset(3, 10, 32, 3, 0)
    assert splits.train.classes == tuple("0123456789")
    assert torch.equal(splits.train.images, expected.images)  # (H, W, C, N) read back exactly
    assert torch.equal(splits.train.labels, expected.labels)  # 10 became 0, 1..9 unchanged
    assert (splits.train.labels == 0).sum() == 3 and len(splits.test) == 20


def test_svhn_extra_split_joins_the_training_set(tmp_path):
    root = write_svhn_files(tmp_path)
    (root / "train_32x32.mat").rename(root / "extra_32x32.mat")
    write_svhn_files(tmp_path, per_class=1)
    splits = _dataset("svhn", extra=True).load(root)
    assert len(splits.train) == 10 + 30
    with pytest.raises(DataError, match="extra_32x32.mat does not exist"):
        _dataset("svhn", extra=True).load(write_svhn_files(tmp_path / "other"))


def test_svhn_error_lines(tmp_path):
    import scipy.io

    with pytest.raises(DataError, match="svhn needs --data-root"):
        _dataset("svhn").load(None)
    with pytest.raises(DataError, match="does not exist"):
        _dataset("svhn").load(tmp_path / "nowhere")
    root = write_svhn_files(tmp_path / "a")
    (root / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match="test_32x32.mat does not exist"):
        _dataset("svhn").load(root)
    (root / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        _dataset("svhn").load(root)
    bad = tmp_path / "b"
    write_svhn_files(bad)
    mat = scipy.io.loadmat(bad / "train_32x32.mat")
    y = mat["y"].copy()
    y[4] = 11
    scipy.io.savemat(bad / "train_32x32.mat", {"X": mat["X"], "y": y})
    with pytest.raises(DataError, match=r"label 11 \(image 4\) is outside 1..10"):
        _dataset("svhn").load(bad)
    y[4] = 0  # 0 is no official label either: the digit 0 is stored as 10
    scipy.io.savemat(bad / "train_32x32.mat", {"X": mat["X"], "y": y})
    with pytest.raises(DataError, match="label 0"):
        _dataset("svhn").load(bad)
    scipy.io.savemat(bad / "train_32x32.mat", {"X": mat["X"][:, :, :1], "y": mat["y"]})
    with pytest.raises(DataError, match=r"not \(32, 32, 3, N\) uint8"):
        _dataset("svhn").load(bad)
    scipy.io.savemat(bad / "train_32x32.mat", {"X": mat["X"], "y": mat["y"][:-1]})
    with pytest.raises(DataError, match="30 images but 29 labels"):
        _dataset("svhn").load(bad)


# --------------------------------------------------------------------------- tiny-imagenet


def test_tiny_imagenet_reads_the_official_layout(tmp_path):
    root = write_tiny_imagenet(tmp_path, num_classes=3, per_class=4, val_per_class=2)
    splits = check_dataset(_dataset("tiny-imagenet"), root=root)
    wnids = (root / "tiny-imagenet-200" / "wnids.txt").read_text().split()
    assert splits.train.classes == tuple(sorted(wnids)) != tuple(wnids)
    assert splits.train.image_size == 64 and splits.train.channels == 3
    assert len(splits.train) == 12 and len(splits.test) == 6
    # val labels come from val_annotations.txt: image val_i has class make_imageset gave it
    val = make_imageset(2, 3, 64, 3, 1)
    by_name = {f"val_{i}.JPEG": sorted(wnids).index(wnids[int(val.labels[i])]) for i in range(6)}
    assert splits.test.labels.tolist() == [by_name[n] for n in sorted(by_name)]
    # the tiny-imagenet-200 folder itself works as --data-root, and num_classes takes the first
    first = _dataset("tiny-imagenet", num_classes=2).load(root / "tiny-imagenet-200")
    assert first.train.classes == tuple(sorted(wnids))[:2] and len(first.test) == 4


def test_tiny_imagenet_converts_grey_jpegs_to_rgb(tmp_path):
    from PIL import Image

    root = write_tiny_imagenet(tmp_path, num_classes=2, per_class=1, val_per_class=1)
    base = root / "tiny-imagenet-200"
    first = sorted((base / "train").glob("*/images/*.JPEG"))[0]
    Image.new("L", (64, 64), color=77).save(first)
    train = _dataset("tiny-imagenet").load(root).train
    assert bool((train.images[0] == train.images[0][0]).all())  # three equal channels
    assert abs(int(train.images[0].float().mean()) - 77) <= 1


def test_tiny_imagenet_error_lines(tmp_path):
    with pytest.raises(DataError, match="tiny-imagenet needs --data-root"):
        _dataset("tiny-imagenet").load(None)
    with pytest.raises(DataError, match="does not exist"):
        _dataset("tiny-imagenet").load(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no wnids.txt"):
        _dataset("tiny-imagenet").load(tmp_path)
    root = write_tiny_imagenet(tmp_path / "a", num_classes=2, per_class=1, val_per_class=1)
    base = root / "tiny-imagenet-200"
    with pytest.raises(DataError, match="num_classes is 5 but wnids.txt lists 2"):
        _dataset("tiny-imagenet", num_classes=5).load(root)
    with pytest.raises(ConfigError, match="num_classes"):
        _dataset("tiny-imagenet", num_classes=0)
    victim = sorted((base / "val" / "images").glob("*.JPEG"))[0]
    victim.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=f"cannot read image .*{victim.name}"):
        _dataset("tiny-imagenet").load(root)
    notes = base / "val" / "val_annotations.txt"
    notes.write_text(notes.read_text().replace("\tn", "\tx", 1))
    with pytest.raises(
        DataError, match="line 1 labels val_0.JPEG with 'x.*which wnids.txt does not list"
    ):
        _dataset("tiny-imagenet").load(root)
    notes.unlink()
    with pytest.raises(DataError, match="val_annotations.txt does not exist"):
        _dataset("tiny-imagenet").load(root)
    big = sorted((base / "train").glob("*/images/*.JPEG"))[0]
    from PIL import Image

    Image.new("RGB", (32, 32)).save(big)
    with pytest.raises(DataError, match="is 32x32, not 64x64"):
        _dataset("tiny-imagenet").load(root)
    for f in (big.parent).glob("*"):
        f.unlink()
    with pytest.raises(DataError, match="no training images in"):
        _dataset("tiny-imagenet").load(root)


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("imagenet-subset", {"train_fraction": 0}),
        ("imagenet-subset", {"train_fraction": 1.5}),
        ("imagenet-subset", {"num_classes": 0}),
        ("imagenet-subset", {"size": 0}),
        ("fashion-mnist-textured", {"photo_size": 31}),
        ("fashion-mnist-textured", {"opaque_at": 256}),
        ("fashion-mnist-textured", {"seed": -1}),
        ("tiny-imagenet", {"num_classes": 0}),
    ],
)
def test_dataset_parameters_outside_their_range_stop_the_plan(name, params):
    key = next(iter(params))
    with pytest.raises(ConfigError, match=f"parameter '{key}' is .*outside its range"):
        _dataset(name, **params)
