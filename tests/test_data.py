"""Tests for ddnb.data and ddnb.loaders: every on-disk format from hand-made tiny files, digits, splits, errors."""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ddnb import data
from ddnb.data import DATASET_NAMES, DatasetNotFoundError, list_datasets, load_dataset, stratified_split
from ddnb.loaders import read_idx

FMNIST_SYSTEM = Path(data.FASHION_MNIST_SYSTEM_DIR)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    """Tests must not see a DDNB_DATA set by whoever runs them."""
    monkeypatch.delenv("DDNB_DATA", raising=False)


def _norm(value: float, mean: float, std: float, scale: float = 255.0) -> float:
    """Hand-written normalization of one raw pixel value."""
    return (value / scale - mean) / std


# ---- writers of the on-disk formats ------------------------------------------------------------

def _idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0,0,0x08,ndim, big-endian dims, then the data."""
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_mnist_like(folder: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> dict:
    """Four IDX files with image i filled with i and pixel (3, 4) of image 1 set to 200."""
    folder.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 28 * 28, axis=1).reshape(n, 28, 28)
        images[1, 3, 4] = 200
        labels = (np.arange(n) % 10).astype(np.uint8)
        arrays[prefix] = (images, labels)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            payload = _idx_bytes(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
    return arrays


def _cifar_batch(n: int, label_key: bytes, num_classes: int, offset: int) -> dict:
    rng = np.random.default_rng(offset)
    batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in (np.arange(n) + offset) % num_classes]}
    return batch


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


# ---- IDX: Fashion-MNIST and MNIST -----------------------------------------------------------------

@pytest.mark.parametrize("name, subdir, gz", [("fashion_mnist", "FashionMNIST/raw", True),
                                              ("fashion_mnist", "fashion-mnist", False),
                                              ("mnist", "MNIST/raw", False),
                                              ("mnist", "MNIST/raw", True)])
def test_idx_datasets_load_hand_made_pixels_and_labels(tmp_path, name, subdir, gz):
    arrays = _write_mnist_like(tmp_path / subdir, gz)
    ds = load_dataset(name, root=tmp_path, device="cpu")
    (mean,), (std,) = ds.mean, ds.std
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.x_train.is_contiguous()
    assert ds.x_train[1, 0, 3, 4].item() == pytest.approx(_norm(200, mean, std), abs=1e-5)
    assert ds.x_train[7, 0, 0, 0].item() == pytest.approx(_norm(7, mean, std), abs=1e-5)
    assert ds.y_train.tolist() == arrays["train"][1].tolist()
    assert ds.y_test.dtype == torch.int64 and ds.y_test.tolist() == arrays["t10k"][1].tolist()
    assert ds.num_classes == 10 and ds.source == str(tmp_path / subdir)
    expected = {"fashion_mnist": ((0.2861,), (0.3530,)), "mnist": ((0.1307,), (0.3081,))}[name]
    assert (ds.mean, ds.std) == expected
    assert ds.classes[0] == ("T-shirt/top" if name == "fashion_mnist" else "0")


def test_read_idx_round_trips_and_rejects_corruption(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good-idx3-ubyte"
    good.write_bytes(_idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(good), arr)
    bad_magic = tmp_path / "magic"
    bad_magic.write_bytes(b"\x12\x34" + _idx_bytes(arr)[2:])
    with pytest.raises(ValueError, match="magic number"):
        read_idx(bad_magic)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(_idx_bytes(arr)[:-3])
    with pytest.raises(ValueError, match="corrupted"):
        read_idx(truncated)
    not_gzip = tmp_path / "x-idx3-ubyte.gz"
    not_gzip.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(not_gzip)


# ---- CIFAR pickle batches ---------------------------------------------------------------------------

def test_cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(3, b"labels", 10, offset=i) for i in range(5)]
    batches[0][b"data"][1, 1024 + 32 * 5 + 7] = 200        # image 1, green channel, row 5, column 7
    for i, batch in enumerate(batches, start=1):
        _dump(folder / f"data_batch_{i}", batch)
    _dump(folder / "test_batch", _cifar_batch(4, b"labels", 10, offset=9))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names})
    ds = load_dataset("cifar10", root=tmp_path, device="cpu")
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.x_train[1, 1, 5, 7].item() == pytest.approx(_norm(200, 0.4822, 0.1994), abs=1e-5)
    raw = batches[4][b"data"][2].reshape(3, 32, 32)              # last image of batch 5 = train index 14
    expected = (raw / 255.0 - np.array(ds.mean)[:, None, None]) / np.array(ds.std)[:, None, None]
    np.testing.assert_allclose(ds.x_train[14].numpy(), expected, atol=1e-5)
    assert ds.y_train.tolist() == [v for b in batches for v in b[b"labels"]]
    assert ds.classes == [n.decode() for n in names]


def test_cifar100_batches(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = _cifar_batch(6, b"fine_labels", 100, offset=95)    # labels 95..99, 0
    _dump(folder / "train", train)
    _dump(folder / "test", _cifar_batch(2, b"fine_labels", 100, offset=3))
    _dump(folder / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)]})
    ds = load_dataset("cifar100", root=tmp_path, device="cpu")
    assert ds.num_classes == 100 and ds.classes[99] == "class99"
    assert ds.y_train.tolist() == [95, 96, 97, 98, 99, 0] and ds.y_test.tolist() == [3, 4]
    assert ds.x_train[0, 2, 0, 0].item() == pytest.approx(
        _norm(int(train[b"data"][0, 2048]), 0.4409, 0.2762), abs=1e-5)


def test_cifar_pickle_with_foreign_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _dump(folder / "train", {b"data": Evil(), b"fine_labels": [0]})
    _dump(folder / "test", _cifar_batch(2, b"fine_labels", 100, offset=0))
    _dump(folder / "meta", {b"fine_label_names": [b"a"] * 100})
    with pytest.raises(ValueError, match="os.*makedirs"):
        load_dataset("cifar100", root=tmp_path, device="cpu")
    assert not marker.exists()


# ---- SVHN .mat ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("subdir", ["svhn", "."])
def test_svhn_mat(tmp_path, subdir):
    from scipy.io import savemat
    folder = tmp_path / subdir
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 3)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        x[2, 5, 0, 1] = 255                                     # row 2, column 5, red, image 1
        y = (np.arange(n) + 9) % 10 + 1                         # 10, 1, 2, ... (10 means digit 0)
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y[:, None].astype(np.uint8)})
        if split == "train":
            x_train = x
    ds = load_dataset("svhn", root=tmp_path, device="cpu")
    assert ds.x_train.shape == (4, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.y_train.tolist() == [0, 1, 2, 3] and ds.y_test.tolist() == [0, 1, 2]
    assert ds.x_train[1, 0, 2, 5].item() == pytest.approx(_norm(255, 0.4377, 0.1980), abs=1e-5)
    assert ds.x_train[3, 2, 31, 0].item() == pytest.approx(_norm(int(x_train[31, 0, 2, 3]), 0.4728, 0.1970),
                                                           abs=1e-5)


# ---- Tiny-ImageNet image folders -------------------------------------------------------------------

def _png(path: Path, rgb: tuple[int, int, int], mode: str = "RGB") -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[...] = rgb
    arr[10, 20] = (255, 0, 128)
    Image.fromarray(arr).convert(mode).save(path)


def test_tinyimagenet_with_val_annotations(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]                                      # sorted: n01 -> class 0, n02 -> class 1
    for k, wnid in enumerate(wnids):
        for i in range(2):
            _png(root / "train" / wnid / "images" / f"{wnid}_{i}.png", (40 * k, 10 * i, 5))
    _png(root / "train" / "n01" / "images" / "n01_gray.png", (90, 90, 90), mode="L")
    _png(root / "val" / "images" / "val_0.png", (1, 2, 3))
    _png(root / "val" / "images" / "val_1.png", (4, 5, 6))
    (root / "val" / "val_annotations.txt").write_text("val_0.png\tn02\t0\t0\t63\t63\nval_1.png\tn01\t0\t0\t63\t63\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttabby, tabby cat\n")
    ds = load_dataset("tinyimagenet", root=tmp_path, device="cpu")
    assert ds.x_train.shape == (5, 3, 64, 64) and ds.x_test.shape == (2, 3, 64, 64)
    assert ds.classes == ["goldfish", "tabby"]
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1] and ds.y_test.tolist() == [1, 0]
    mean, std = ds.mean, ds.std
    # train order: n01_0, n01_1, n01_gray, n02_0, n02_1; n02_1 is (40, 10, 5) with a (255, 0, 128) pixel
    assert ds.x_train[4, 1, 0, 0].item() == pytest.approx(_norm(10, mean[1], std[1]), abs=1e-5)
    assert ds.x_train[4, 2, 10, 20].item() == pytest.approx(_norm(128, mean[2], std[2]), abs=1e-5)
    assert ds.x_test[0, 2, 0, 0].item() == pytest.approx(_norm(3, mean[2], std[2]), abs=1e-5)
    gray = ds.denormalize(ds.x_train[2, :, :1, :1]) * 255                      # grayscale -> 3 equal channels
    torch.testing.assert_close(gray, torch.full((3, 1, 1), 90.0), atol=1e-3, rtol=0)


def test_tinyimagenet_imagefolder_val_and_jpeg(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    for wnid in ("a", "b", "c"):
        _png(root / "train" / wnid / f"{wnid}.JPEG", (100, 100, 100))
        _png(root / "val" / wnid / f"v_{wnid}.JPEG", (100, 100, 100))
    ds = load_dataset("tinyimagenet", root=tmp_path, device="cpu")
    assert ds.classes == ["a", "b", "c"] and ds.image_shape == (3, 64, 64)
    assert ds.y_train.tolist() == [0, 1, 2] and ds.y_test.tolist() == [0, 1, 2]
    assert abs(ds.denormalize(ds.x_test)[:, :, 40:, 40:] * 255 - 100).max() < 3     # JPEG is lossy


# ---- digits -----------------------------------------------------------------------------------------------

def test_digits_shapes_classes_and_documented_statistics():
    from sklearn.datasets import load_digits
    ds = load_dataset("digits", device="cpu")
    assert ds.x_train.shape == (1198, 1, 8, 8) and ds.x_test.shape == (599, 1, 8, 8)
    assert ds.classes == [str(i) for i in range(10)] and ds.source == "sklearn"
    assert (ds.image_shape, ds.channels, ds.image_size) == ((1, 8, 8), 1, 8)
    assert torch.bincount(ds.y_test).min() >= 17                    # stratified: about a third of each class
    # the hardcoded mean/std are those of the train split: normalized train has mean 0, std 1
    assert abs(ds.x_train.mean().item()) < 1e-3 and abs(ds.x_train.std(unbiased=False).item() - 1) < 1e-3
    # denormalized pixels are sklearn's values / 16, and train + test is all of sklearn's digits
    raw = torch.cat([ds.denormalize(ds.x_train), ds.denormalize(ds.x_test)]) * 16
    torch.testing.assert_close(raw, raw.round(), atol=1e-4, rtol=0)
    sk = load_digits()
    assert sorted(map(bytes, raw.round().to(torch.uint8).reshape(-1, 64).numpy())) == \
        sorted(map(bytes, sk.data.astype(np.uint8)))


def test_load_is_deterministic_and_to_is_a_no_op_where_the_tensors_are():
    a, b = load_dataset("digits", device="cpu"), load_dataset("digits", device="cpu")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.to("cpu") is a and a.to(torch.device("cpu")) is a


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_moves_a_copy_to_another_device_and_stays_there():
    a = load_dataset("digits", device="cpu", val_fraction=0.1)
    moved = a.to("cuda")
    assert moved is not a and moved.x_val.is_cuda and torch.equal(moved.x_train.cpu(), a.x_train)
    assert moved.to("cuda") is moved and moved.to("cuda:0") is moved and a.x_train.device.type == "cpu"


# ---- splits and class helpers -------------------------------------------------------------------------

def test_stratified_split_is_deterministic_disjoint_and_stratified():
    y = torch.tensor([0] * 30 + [1] * 12 + [2] * 3)
    kept, held = stratified_split(y, 0.25, seed=4)
    kept2, held2 = stratified_split(y, 0.25, seed=4)
    assert torch.equal(kept, kept2) and torch.equal(held, held2)
    assert set(kept.tolist()).isdisjoint(held.tolist())
    assert sorted(kept.tolist() + held.tolist()) == list(range(len(y)))
    assert torch.bincount(y[held], minlength=3).tolist() == [8, 3, 1]   # round(30/4), 12/4, round(3/4)
    assert not torch.equal(held, stratified_split(y, 0.25, seed=5)[1])


def test_val_split_of_load_dataset_comes_from_train_only():
    full = load_dataset("digits", device="cpu")
    ds = load_dataset("digits", device="cpu", val_fraction=0.2, seed=3)
    kept, held = stratified_split(full.y_train, 0.2, seed=3)
    assert torch.equal(ds.x_val, full.x_train[held]) and torch.equal(ds.y_val, full.y_train[held])
    assert torch.equal(ds.x_train, full.x_train[kept]) and torch.equal(ds.x_test, full.x_test)
    assert len(ds.x_train) + len(ds.x_val) == len(full.x_train)
    again = load_dataset("digits", device="cpu", val_fraction=0.2, seed=3)
    assert torch.equal(again.x_val, ds.x_val)
    assert "val=" in repr(ds)


def test_subset_is_direct_indexing_of_train_only():
    ds = load_dataset("digits", device="cpu", val_fraction=0.1)
    ds.class_indices()                                                   # a cache the subset must not inherit
    for idx in ([5, 0, 5, 17], np.array([3, 1], dtype=np.int32), torch.arange(0, len(ds.x_train), 7)):
        sub = ds.subset(idx)
        want = torch.as_tensor(idx).long()
        assert torch.equal(sub.x_train, ds.x_train[want]) and torch.equal(sub.y_train, ds.y_train[want])
        assert sub.x_test is ds.x_test and sub.x_val is ds.x_val and sub.classes == ds.classes
        assert (sub.name, sub.mean, sub.std, sub.source) == (ds.name, ds.mean, ds.std, ds.source)
        assert sorted(torch.cat(sub.class_indices()).tolist()) == list(range(len(want)))
    assert len(ds.subset([]).x_train) == 0


@pytest.mark.parametrize("bad", [[0, 1198], [-1], [0.5], [[0, 1]], torch.tensor([True, False])])
def test_subset_rejects_bad_indices_with_one_error(bad):
    ds = load_dataset("digits", device="cpu")
    with pytest.raises(ValueError, match=r"subset indices must be a 1-D sequence of ints in 0\.\.1197"):
        ds.subset(bad)


def test_class_indices_cover_every_sample_once_and_sampling():
    ds = load_dataset("digits", device="cpu", val_fraction=0.1)
    idx = ds.class_indices()
    assert len(idx) == 10 and ds.class_indices() is idx                # cached
    assert sorted(torch.cat(idx).tolist()) == list(range(len(ds.y_train)))
    for c, ic in enumerate(idx):
        assert (ds.y_train[ic] == c).all()
    assert torch.equal(ds.real_by_class(3), ds.x_train[ds.y_train == 3])
    gen = torch.Generator().manual_seed(0)
    picks = ds.sample_class(3, 5, gen)
    real = ds.real_by_class(3).flatten(1)
    rows = [int(torch.nonzero((real == p.flatten()).all(1))[0]) for p in picks]
    assert picks.shape == (5, 1, 8, 8) and len(set(rows)) == 5
    assert torch.equal(picks, ds.sample_class(3, 5, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="n=10000"):
        ds.sample_class(3, 10000)
    with pytest.raises(ValueError, match="class 10"):
        ds.real_by_class(10)


def test_denormalize_inverts_normalize():
    ds = load_dataset("digits", device="cpu")
    x01 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ds.denormalize(ds.normalize(x01)), x01)
    hand = (x01 - 0.3054) / 0.3762
    torch.testing.assert_close(ds.normalize(x01), hand)
    with pytest.raises(ValueError, match="3, 8, 8"):
        ds.denormalize(torch.zeros(2, 3, 8, 8))


# ---- errors and discovery ---------------------------------------------------------------------------

def test_unknown_name_and_bad_arguments():
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet1k")
    for name in DATASET_NAMES:
        assert name in str(err.value)
    assert "imagenet1k" in str(err.value)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", device="cpu", val_fraction=1.0)
    with pytest.raises(ValueError, match="seed"):
        load_dataset("digits", device="cpu", seed=-1)
    assert data.canonical_name("Fashion-MNIST") == "fashion_mnist"


def test_missing_dataset_lists_every_place(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    partial_dir = tmp_path / "root" / "cifar-10-batches-py"
    partial_dir.mkdir(parents=True)
    (partial_dir / "data_batch_1").write_bytes(b"")
    monkeypatch.setenv("DDNB_DATA", str(env_dir))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path / "root")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and "'cifar10'" in msg
    assert str(partial_dir) in msg and "missing data_batch_2" in msg
    assert str(env_dir / "cifar-10-batches-py") in msg and "$DDNB_DATA" in msg
    assert "torchvision.datasets.CIFAR10" in msg and "DDNB_DATA=ROOT" in msg


def test_missing_fashion_mnist_says_apt_get(tmp_path, monkeypatch):
    spec = dataclasses.replace(data._SPECS["fashion_mnist"], system_dirs=(str(tmp_path / "sys"),))
    monkeypatch.setitem(data._SPECS, "fashion_mnist", spec)
    monkeypatch.setenv("DDNB_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist", root=tmp_path / "root")
    msg = str(err.value)
    for place in (tmp_path / "root" / "FashionMNIST" / "raw", tmp_path / "env" / "fashion-mnist", tmp_path / "sys"):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "FashionMNIST('ROOT', download=True)" in msg


def test_missing_without_any_root_says_so():
    with pytest.raises(DatasetNotFoundError, match="no root argument was given and \\$DDNB_DATA is not set"):
        load_dataset("svhn")


def test_list_datasets_reports_availability(tmp_path, monkeypatch):
    _write_mnist_like(tmp_path / "MNIST" / "raw", gz=True)
    monkeypatch.setenv("DDNB_DATA", str(tmp_path / "env"))
    rows = {r["name"]: r for r in list_datasets(root=tmp_path)}
    assert list(rows) == list(DATASET_NAMES)
    assert rows["digits"]["available"] and rows["mnist"]["available"]
    assert rows["mnist"]["path"] == str(tmp_path / "MNIST" / "raw")
    assert not rows["cifar100"]["available"] and rows["cifar100"]["path"] is None
    assert rows["cifar100"]["places"] == [str(tmp_path / "cifar-100-python"),
                                          str(tmp_path / "env" / "cifar-100-python")]


@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(), reason=f"{FMNIST_SYSTEM} not installed")
def test_system_fashion_mnist():
    ds = load_dataset("fashion_mnist", device="cpu")
    assert len(ds.x_train) == 60000 and len(ds.x_test) == 10000 and ds.num_classes == 10
    assert ds.x_train.shape[1:] == (1, 28, 28) and ds.x_train.is_contiguous()
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert abs(ds.x_train.mean().item()) < 0.01 and abs(ds.x_train.std().item() - 1) < 0.01
