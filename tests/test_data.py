"""Dataset layer: tiny files in each real on-disk format, safe unpickling, augmentations."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flowgraph.data import (
    DATASETS,
    FASHION_MNIST_DIR,
    DatasetError,
    DatasetOptionError,
    UnsafePickleError,
    load_dataset,
    make_augment,
)
from flowgraph.data.augment import AUGMENTATIONS, eta_padding
from flowgraph.data.celeba import REALNVP_BOX
from flowgraph.data.safe_pickle import load_pickle
from flowgraph.errors import FlowgraphError

# ---------------------------------------------------------------- writers of the real formats


def write_idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> None:
    head = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    payload = head + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def idx_folder(root: Path, n_train: int = 3, n_test: int = 2, h: int = 4, w: int = 5) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    return root


def planes_rows(n: int, side: int, offset: int = 0) -> np.ndarray:
    """Rows of R, G, B planes: image k has R = 10+k, G = 100+k, B = 200+k (mod 256) and a
    marker 255 in the R plane at (row 1, column 2)."""
    img = np.zeros((n, 3, side, side), dtype=np.uint8)
    for k in range(n):
        img[k, 0], img[k, 1], img[k, 2] = (10 + k + offset) % 256, (100 + k) % 256, (200 + k) % 256
        img[k, 0, 1, 2] = 255
    return img.reshape(n, 3 * side * side)


def write_cifar(root: Path, per_batch: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        batch = {b"batch_label": f"batch {b}".encode(), b"labels": [b] * per_batch,
                 b"data": planes_rows(per_batch, 32, offset=10 * b),
                 b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def write_imagenet(root: Path, side: int, npz: bool = False, per_batch: int = 2) -> Path:
    names = [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]
    for b, name in enumerate(names):
        sub = root / (f"part{1 + (b >= 5)}" if npz else "")
        sub.mkdir(parents=True, exist_ok=True)
        data = planes_rows(per_batch, side, offset=b)
        labels = [b + 1] * per_batch  # the release's labels are 1..1000
        if npz:
            np.savez(sub / f"{name}.npz", data=data, labels=np.array(labels),
                     mean=data.mean(0))
        else:
            batch = {"data": data, "labels": labels, "mean": data.mean(0)}
            (sub / name).write_bytes(pickle.dumps(batch))  # default protocol (5)
    return root


def write_celeba(root: Path, partitions: tuple[int, ...] = (0, 0, 0, 1, 2, 2)) -> Path:
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    lines = []
    for k, part in enumerate(partitions, start=1):
        arr = np.zeros((218, 178, 3), dtype=np.uint8)
        arr[:, :] = (0, 0, 255)  # blue outside the RealNVP box
        left, top, right, bottom = REALNVP_BOX
        arr[top:bottom, left:right] = (255, 0, 0)  # red inside it
        Image.fromarray(arr).save(images / f"{k:06d}.jpg", quality=95)
        lines.append(f"{k:06d}.jpg {part}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def assert_names(err: pytest.ExceptionInfo, path: Path, *howto: str) -> None:
    text = str(err.value)
    assert str(path) in text, text
    for word in howto:
        assert word in text, text


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def test_idx_loads_shapes_values_and_labels(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "mnist")
    train, test = load_dataset("mnist", "train", root), load_dataset("mnist", "test", root)
    assert (len(train), len(test), train.shape) == (3, 2, (1, 4, 5))
    with gzip.open(root / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read()[16:], dtype=np.uint8).reshape(3, 4, 5)
    assert train[1].dtype == torch.uint8 and train[1].shape == (1, 4, 5)
    assert torch.equal(train[1][0], torch.from_numpy(raw[1].copy()))
    assert torch.equal(train[-1], train[2])
    assert train.labels.tolist() == [0, 1, 2]
    with pytest.raises(IndexError):
        train[3]
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=3)))
    assert batch.shape == (3, 1, 4, 5) and batch.dtype == torch.uint8


def test_idx_uncompressed_and_data_dir_override(tmp_path: Path) -> None:
    root = tmp_path / "fm"
    root.mkdir()
    for prefix, n in (("train", 2), ("t10k", 1)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", np.full((n, 28, 28), 7, np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.zeros(n, np.uint8))
    ds = load_dataset("fashion-mnist", "train", data_dir=str(root))
    assert len(ds) == 2 and ds.root == root and int(ds[0].max()) == 7


@pytest.mark.parametrize("defect", ["truncated", "magic", "counts", "short_data", "not_gzip"])
def test_idx_corrupt_files_name_the_path(tmp_path: Path, defect: str) -> None:
    root = idx_folder(tmp_path / "mnist")
    images = root / "train-images-idx3-ubyte.gz"
    if defect == "truncated":
        images.write_bytes(images.read_bytes()[:-20])
    elif defect == "magic":
        write_idx(images, np.zeros((3, 4, 5), np.uint8), magic=bytes([0, 0, 0x0D, 3]))
    elif defect == "counts":
        write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    elif defect == "short_data":
        payload = bytes([0, 0, 8, 3]) + struct.pack(">3I", 3, 4, 5) + bytes(50)
        images.write_bytes(gzip.compress(payload))
    else:
        images.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", "train", root)
    bad = root / "train-labels-idx1-ubyte.gz" if defect == "counts" else images
    assert_names(err, bad, "yann.lecun.com", "data_dir")
    assert "Got" in str(err.value)


def test_idx_missing_files_and_folders(tmp_path: Path) -> None:
    root = idx_folder(tmp_path / "mnist")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", "test", root)
    assert_names(err, root / "t10k-labels-idx1-ubyte.gz", "yann.lecun.com")
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", "train", tmp_path / "nowhere")
    assert_names(err, tmp_path / "nowhere", "apt-get install dataset-fashion-mnist")
    with pytest.raises(DatasetError, match="data_dir"):
        load_dataset("mnist", "train")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason=f"Fashion-MNIST is not installed at {FASHION_MNIST_DIR} "
                           "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian_package() -> None:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.shape == test.shape == (1, 28, 28)
    assert train[0].dtype == torch.uint8 and train[0].shape == (1, 28, 28)
    assert train.labels[:4].tolist() == [9, 0, 0, 3] and set(test.labels.tolist()) == set(range(10))


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_planes_order_and_splits(tmp_path: Path) -> None:
    root = write_cifar(tmp_path)
    train, test = load_dataset("cifar10", "train", root), load_dataset("cifar10", "test", root)
    assert (len(train), len(test), train.shape) == (10, 2, (3, 32, 32))
    img = train[3]  # batch 2 (offset 10), second image
    assert img.dtype == torch.uint8
    assert int(img[0, 0, 0]) == 10 + 1 + 10 and int(img[1, 5, 5]) == 101
    assert int(img[2, 31, 31]) == 201 and int(img[0, 1, 2]) == 255 and int(img[0, 2, 1]) != 255
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert test.labels.tolist() == [5, 5]
    same = load_dataset("cifar10", "test", root / "cifar-10-batches-py")
    assert torch.equal(same[1], test[1])


class Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the real CIFAR-10 batches were."""

    def save_bytes(self, obj: bytes) -> None:
        op = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else (
            pickle.BINSTRING + struct.pack("<i", len(obj)))
        self.write(op + obj)
        self.memoize(obj)

    dispatch: ClassVar[dict] = {**pickle._Pickler.dispatch, bytes: save_bytes}  # type: ignore


def test_cifar10_python2_pickle_with_numpy1_paths(tmp_path: Path) -> None:
    root = write_cifar(tmp_path)
    buf = io.BytesIO()
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 4],
             b"data": planes_rows(2, 32), b"filenames": [b"a.png", b"b.png"]}
    Python2Pickler(buf, protocol=2).dump(batch)
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(raw)
    test = load_dataset("cifar10", "test", root)
    assert test.labels.tolist() == [3, 4]
    assert int(test[1][0, 0, 0]) == 11 and int(test[1][0, 1, 2]) == 255


@pytest.mark.parametrize("defect", ["no_labels", "wide", "truncated", "list", "missing"])
def test_cifar10_defects_give_dataset_errors(tmp_path: Path, defect: str) -> None:
    root = write_cifar(tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    if defect == "no_labels":
        path.write_bytes(pickle.dumps({b"data": planes_rows(2, 32)}, protocol=2))
    elif defect == "wide":
        path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]},
                                      protocol=2))
    elif defect == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif defect == "list":
        path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    else:
        path.unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", "train", root)
    assert_names(err, path, "cifar-10-python.tar.gz", "--data-dir")


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = write_cifar(tmp_path)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        load_dataset("cifar10", "test", root)
    assert not marker.exists()
    assert "system" in str(err.value) and str(path) in str(err.value)
    for protocol in (0, 2, 5):
        evil = tmp_path / f"evil{protocol}.pkl"
        evil.write_bytes(pickle.dumps(Evil(), protocol=protocol))
        with pytest.raises(UnsafePickleError):
            load_pickle(evil, "batch", "how")
        evil.write_bytes(pickle.dumps({"x": eval}, protocol=protocol))
        with pytest.raises(UnsafePickleError, match=r"builtins?_*\.eval"):
            load_pickle(evil, "batch", "how")
    assert not marker.exists()
    # plain numpy data in every protocol still loads
    for protocol in (2, 4, 5):
        ok = tmp_path / f"ok{protocol}.pkl"
        ok.write_bytes(pickle.dumps({"a": np.arange(5, dtype=np.uint8), "n": np.int64(3),
                                     "b": b"\x00\xff"}, protocol=protocol))
        got = load_pickle(ok, "batch", "how")
        assert got["a"].tolist() == [0, 1, 2, 3, 4] and got["n"] == 3 and got["b"] == b"\x00\xff"


# ---------------------------------------------------------------- ImageNet32 / ImageNet64


def test_imagenet32_pickles(tmp_path: Path) -> None:
    root = write_imagenet(tmp_path / "in32", 32)
    train, test = load_dataset("imagenet32", "train", root), load_dataset("imagenet32", "test", root)
    assert (len(train), len(test), train.shape) == (20, 2, (3, 32, 32))
    img = train[5]  # batch 3 (offset 2), second image
    assert (int(img[0, 0, 0]), int(img[1, 0, 0]), int(img[2, 0, 0])) == (13, 101, 201)
    assert int(img[0, 1, 2]) == 255
    assert train.labels[:4].tolist() == [1, 1, 2, 2] and test.labels.tolist() == [11, 11]
    assert train.images().shape == (20, 3, 32, 32)


def test_imagenet64_npz_in_subfolders(tmp_path: Path) -> None:
    root = write_imagenet(tmp_path / "in64", 64, npz=True, per_batch=1)
    train, test = load_dataset("imagenet64", "train", root), load_dataset("imagenet64", "test", root)
    assert (len(train), len(test), test.shape) == (10, 1, (3, 64, 64))
    assert int(train[9][0, 0, 0]) == 10 + 9 and int(train[9][0, 1, 2]) == 255
    with pytest.raises(DatasetError, match=r"\[N, 3072\]") as err:
        load_dataset("imagenet32", "test", root)  # 64x64 rows are not 32x32 images
    assert_names(err, root / "part2" / "val_data.npz", "image-net.org")


def test_imagenet_missing_batch_and_corrupt_npz(tmp_path: Path) -> None:
    root = write_imagenet(tmp_path / "in32", 32)
    (root / "train_data_batch_7").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet32", "train", root)
    assert_names(err, root / "train_data_batch_7", "Imagenet32_train.zip", "image-net.org")
    (root / "val_data").unlink()
    (root / "val_data.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet32", "test", root)
    assert_names(err, root / "val_data.npz", "image-net.org")


# ---------------------------------------------------------------- CelebA


def test_celeba_splits_crop_and_resize(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "celeba")
    train = load_dataset("celeba", "train", root)
    test = load_dataset("celeba", "test", root, crop="realnvp")
    assert (len(train), len(test)) == (3, 2)
    assert [p.name for p in test.files] == ["000005.jpg", "000006.jpg"]
    full, cropped = train[0], test[0]
    assert full.shape == cropped.shape == (3, 64, 64) and full.dtype == torch.uint8
    # realnvp: only the (red) box is kept
    assert int(cropped[0, 2:-2, 2:-2].min()) > 200 and int(cropped[2, 2:-2, 2:-2].max()) < 60
    assert float(cropped[0].float().mean()) > 240
    # none (official): the whole 178x218 face is squashed to 64x64, so the blue margins remain
    assert int(full[2, 0].min()) > 200 and int(full[0, 32, 32]) > 200
    assert int(full[2, :, 0].min()) > 200  # left margin (15 of 178 columns) is blue too
    small = load_dataset("celeba", "train", root, size=32)
    assert small.shape == (3, 32, 32) and small[2].shape == (3, 32, 32)


def test_celeba_torchvision_layout_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_celeba(root / "celeba")
    assert len(load_dataset("celeba", "test", root)) == 2
    with pytest.raises(DatasetError) as err:
        load_dataset("celeba", "train", tmp_path)
    assert_names(err, tmp_path / "list_eval_partition.txt", "mmlab.ie.cuhk.edu.hk")
    with pytest.raises(DatasetOptionError, match="realnvp"):
        load_dataset("celeba", "train", root, crop="center")
    listing = root / "celeba" / "list_eval_partition.txt"
    listing.write_text("000001.jpg 0\n000002.jpg train\n")
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt:2") as err:
        load_dataset("celeba", "train", root)
    assert "mmlab" in str(err.value)


def test_celeba_missing_or_corrupt_image_at_access(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "celeba")
    (root / "img_align_celeba" / "000002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "img_align_celeba" / "000003.jpg").unlink()
    ds = load_dataset("celeba", "train", root)
    with pytest.raises(DatasetError) as err:
        ds[1]
    assert_names(err, root / "img_align_celeba" / "000002.jpg", "mmlab")
    with pytest.raises(DatasetError) as err:
        ds[2]
    assert_names(err, root / "img_align_celeba" / "000003.jpg", "mmlab")


# ---------------------------------------------------------------- folder of images


def test_folder_recursive_native_size_and_channels(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    a = np.zeros((6, 8, 3), np.uint8)
    a[..., 0], a[0, 1] = 50, (1, 2, 3)
    save_png(root / "b" / "x.png", a)
    save_png(root / "a.png", np.full((6, 8, 3), 9, np.uint8))
    (root / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", "train", root)
    assert (len(ds), ds.shape) == (2, (3, 6, 8))
    assert [p.relative_to(root).as_posix() for p in ds.files] == ["a.png", "b/x.png"]
    assert int(ds[1][0, 3, 3]) == 50 and ds[1][:, 0, 1].tolist() == [1, 2, 3]
    gray = load_dataset("folder", "train", root, channels=1, size=4)
    assert gray.shape == (1, 4, 4) and gray[0].shape == (1, 4, 4) and int(gray[0].max()) == 9
    with pytest.raises(DatasetError) as err:
        load_dataset("folder", "test", root)
    assert_names(err, root / "test", "test/")
    save_png(root / "c.png", np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(DatasetError, match="must share") as err:
        load_dataset("folder", "train", root)[2]
    assert str(root / "c.png") in str(err.value)


def test_folder_train_test_subfolders_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for split, n in (("train", 3), ("test", 1)):
        for k in range(n):
            save_png(root / split / f"{k}.png", np.full((10, 12, 3), k, np.uint8))
    assert len(load_dataset("folder", "train", root, size=8)) == 3
    assert len(load_dataset("folder", "test", root, size=8)) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images") as err:
        load_dataset("folder", "train", tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)
    with pytest.raises(DatasetOptionError, match="channels"):
        load_dataset("folder", "train", root, channels=4)


# ---------------------------------------------------------------- load_dataset arguments


def test_load_dataset_validates_names_splits_and_options(tmp_path: Path) -> None:
    assert list(DATASETS) == ["fashion-mnist", "mnist", "cifar10", "imagenet32", "imagenet64",
                              "celeba", "folder"]
    assert DATASETS["cifar10"].augment == "eta" and DATASETS["celeba"].augment == "horizontal_flip"
    with pytest.raises(DatasetOptionError, match="cifar10") as err:
        load_dataset("cifar100", "train", tmp_path)
    assert isinstance(err.value, FlowgraphError) and isinstance(err.value, ValueError)
    with pytest.raises(DatasetOptionError, match="valid"):
        load_dataset("cifar10", "valid", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DatasetOptionError, match="crop"):
        load_dataset("cifar10", "train", tmp_path, crop="realnvp")


# ---------------------------------------------------------------- augmentations


def distinct_images(n: int, side: int) -> torch.Tensor:
    return torch.arange(side * side).reshape(1, 1, side, side).repeat(n, 2, 1, 1)


def eta_reference(x: torch.Tensor, flip: bool, tx: int, ty: int) -> torch.Tensor:
    """The official pipeline step by step: flip, edge pad, shift with 0 fill, center crop."""
    h, w = x.shape[-2:]
    p = eta_padding(h)
    y = x.flip(-1) if flip else x
    y = F.pad(y[None].double(), (p, p, p, p), mode="replicate")[0]
    shifted = torch.zeros_like(y)
    hp, wp = y.shape[-2:]
    shifted[:, max(ty, 0):hp + min(ty, 0), max(tx, 0):wp + min(tx, 0)] = \
        y[:, max(-ty, 0):hp - max(ty, 0), max(-tx, 0):wp - max(tx, 0)]
    return shifted[:, p:p + h, p:p + w].to(x.dtype)


@pytest.mark.parametrize("side", [32, 64])
def test_eta_matches_the_official_pipeline(side: int) -> None:
    assert (eta_padding(32), eta_padding(64)) == (2, 3)
    reach = round(0.04 * (side + 2 * eta_padding(side)))  # 1 at 32, 3 at 64
    x = distinct_images(64, side)
    out = make_augment("eta")(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for k in range(len(x)):
        matches = [(f, tx, ty) for f in (False, True) for tx in range(-reach, reach + 1)
                   for ty in range(-reach, reach + 1)
                   if torch.equal(eta_reference(x[k], f, tx, ty), out[k])]
        assert matches, f"image {k} is not a flip + shift within ±{reach}"
        seen.add(matches[0])
    assert {f for f, _, _ in seen} == {False, True} and len(seen) > 6


def test_eta_moves_pixels_at_most_the_padding() -> None:
    side, p = 32, eta_padding(32)
    x = distinct_images(16, side)
    out = make_augment("eta")(x, torch.Generator().manual_seed(3))
    i = torch.arange(side)[:, None].expand(side, side)
    j = torch.arange(side)[None, :].expand(side, side)
    for k in range(16):
        src_i, src_j = out[k, 0] // side, out[k, 0] % side
        assert (src_i - i).abs().max() <= p
        assert min((src_j - j).abs().max(), (side - 1 - src_j - j).abs().max()) <= p


def test_augment_reproducible_single_images_and_uint8() -> None:
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    for name in AUGMENTATIONS:
        aug = make_augment(name)
        a = aug(x, torch.Generator().manual_seed(7))
        b = aug(x, torch.Generator().manual_seed(7))
        assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape
        assert aug(x[0], torch.Generator().manual_seed(1)).shape == (3, 32, 32)
    eta = make_augment("eta")
    assert not torch.equal(eta(x, torch.Generator().manual_seed(1)),
                           eta(x, torch.Generator().manual_seed(2)))
    assert make_augment("none")(x) is x
    with pytest.raises(ValueError, match="Got shape"):
        eta(x[0, 0])


def test_horizontal_flip_is_a_flip() -> None:
    x = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    out = make_augment("horizontal_flip")(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 60 < int(flipped.sum()) < 140


def test_unknown_augmentation_lists_the_options() -> None:
    with pytest.raises(DatasetOptionError) as err:
        make_augment("random_crop")
    assert all(name in str(err.value) for name in AUGMENTATIONS)
    assert "Got 'random_crop'" in str(err.value)
