"""SyntheticSet: validation, decoding, ipc, and safe save / load (roundtrip, corrupted, foreign files)."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from ddnb.augment import factor_decode
from ddnb.synset import SyntheticSet, infer_label_kind


def _hard_set(n_per_class: int = 2, k: int = 3) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_per_class * k, 1, 8, 8, generator=g)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    return SyntheticSet(images, labels, "digits", k, (1, 8, 8), provenance={"method": "test", "seed": 3})


def _soft_set() -> SyntheticSet:
    probs = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), 1)
    return SyntheticSet(torch.randn(6, 1, 8, 8), probs, "digits", 3, (1, 8, 8))


def _factored_set() -> SyntheticSet:
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    return SyntheticSet(images, torch.tensor([0, 1, 2]), "digits", 3, (1, 8, 8), factor=2)


def test_label_kinds_are_inferred():
    assert infer_label_kind(torch.tensor([0, 1])) == "hard"
    assert infer_label_kind(torch.tensor([[0.3, 0.7]])) == "soft_probs"
    assert infer_label_kind(torch.tensor([[2.0, -1.0]])) == "soft_logits"
    assert _soft_set().is_soft and not _hard_set().is_soft


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=torch.tensor([0, 1])), "2 labels for 6 images"),
    (dict(labels=torch.tensor([0, 1, 2, 0, 1, 3])), r"\[0, 3\)"),
    (dict(labels=torch.randn(6, 4)), r"shape \(N, 3\)"),
    (dict(labels=torch.full((6, 3), 0.5), label_kind="soft_probs"), "summing to 1"),
    (dict(images=torch.randn(6, 3, 8, 8)), "3 channels"),
    (dict(images=torch.randn(6, 1, 7, 7)), "image_shape"),
    (dict(factor=0), "factor"),
    (dict(label_kind="fuzzy"), "label_kind must be one of"),
])
def test_validation_messages(kwargs, match):
    base = dict(images=torch.randn(6, 1, 8, 8), labels=torch.tensor([0, 1, 2, 0, 1, 2]), dataset="digits",
                num_classes=3, image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=match):
        SyntheticSet(**{**base, **kwargs})


def test_ipc_counts_decoded_images_and_soft_argmax():
    assert _hard_set(n_per_class=4).ipc == 4
    assert _factored_set().ipc == 4 and _factored_set().class_counts() == [4, 4, 4]
    soft = _soft_set()
    assert torch.equal(soft.hard_labels, soft.labels.argmax(1))
    assert sum(soft.class_counts()) == 6


def test_decoded_factored_matches_factor_decode_with_labels_per_piece():
    s = _factored_set()
    images, labels = s.decoded()
    assert images.shape == (12, 1, 8, 8)
    assert torch.equal(images, factor_decode(s.images, 2, 8))
    # tile-major order: piece t of stored image n sits at t * N + n; check by a constant-per-image set
    const = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 8, 8).contiguous()
    src = factor_decode(const, 2, 8)[:, 0, 0, 0].round().long()
    assert torch.equal(labels, s.labels[src])


def test_from_real_takes_images_labels_and_records_provenance():
    class _Data:  # the few Dataset fields from_real reads
        name, num_classes, image_shape = "digits", 3, (1, 8, 8)
        x_train = torch.randn(10, 1, 8, 8)
        y_train = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])

    s = SyntheticSet.from_real(_Data(), [4, 2, 9], "random", seed=7, params={"ipc": 1})
    assert torch.equal(s.images, _Data.x_train[[4, 2, 9]]) and s.labels.tolist() == [1, 2, 0]
    assert s.provenance["method"] == "random" and s.provenance["seed"] == 7
    assert s.provenance["indices"] == [4, 2, 9] and s.provenance["params"] == {"ipc": 1}
    assert "ddnb_version" in s.provenance and "created" in s.provenance
    with pytest.raises(ValueError, match="indices must lie in"):
        SyntheticSet.from_real(_Data(), [10], "random")


@pytest.mark.parametrize("make", [_hard_set, _soft_set, _factored_set])
def test_save_load_roundtrip(tmp_path, make):
    s = make()
    path = s.save(tmp_path / "set.safetensors")
    back = SyntheticSet.load(path)
    assert torch.equal(back.images, s.images) and torch.equal(back.labels, s.labels)
    assert back.labels.dtype == s.labels.dtype
    for attr in ("dataset", "num_classes", "image_shape", "factor", "label_kind", "provenance"):
        assert getattr(back, attr) == getattr(s, attr), attr
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_truncated_file_is_a_clear_error(tmp_path):
    path = _hard_set().save(tmp_path / "set.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"set\.safetensors.*truncated or corrupted"):
        SyntheticSet.load(path)
    path.write_bytes(data[:20])
    with pytest.raises(ValueError, match=r"set\.safetensors.*truncated"):
        SyntheticSet.load(path)


def test_flipped_bytes_fail_the_checksum(tmp_path):
    path = _hard_set().save(tmp_path / "set.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted.*checksum"):
        SyntheticSet.load(path)


def test_foreign_files_are_clear_errors(tmp_path):
    foreign = tmp_path / "other.safetensors"
    foreign.write_bytes(safetensors.torch.save({"w": torch.zeros(3)}, metadata={"a": "b"}))
    with pytest.raises(ValueError, match=r"other\.safetensors.*without ddnb metadata.*ddnb\.SyntheticSet"):
        SyntheticSet.load(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a tensor file\n")
    with pytest.raises(ValueError, match=r"notes\.txt.*expected a ddnb\.SyntheticSet"):
        SyntheticSet.load(text)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        SyntheticSet.load(tmp_path / "missing.safetensors")


def test_metadata_is_plain_json_in_the_safetensors_header(tmp_path):
    path = _hard_set().save(tmp_path / "set.safetensors")
    n = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + n])
    meta = json.loads(header["__metadata__"]["ddnb_meta"])
    assert header["__metadata__"]["ddnb_kind"] == "ddnb.SyntheticSet"
    assert meta["dataset"] == "digits" and meta["provenance"]["method"] == "test"


def _flip_in_header(path, needle: bytes) -> None:
    """Flip the lowest bit of the last byte of `needle` inside the file's JSON header (length unchanged)."""
    data = bytearray(path.read_bytes())
    at = data.index(needle) + len(needle) - 1
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_metadata_bit_fails_the_checksum(tmp_path):
    path = _hard_set(k=10).save(tmp_path / "set.safetensors")
    _flip_in_header(path, b'num_classes\\": 10')  # 10 -> 11 by one bit: still a valid set
    with pytest.raises(ValueError, match=r"set\.safetensors is corrupted.*checksum"):
        SyntheticSet.load(path)


def test_old_format_set_loads_with_a_warning(tmp_path):
    from ddnb import synset as sm

    s = _hard_set()
    meta = {"dataset": s.dataset, "num_classes": s.num_classes, "image_shape": list(s.image_shape),
            "factor": s.factor, "label_kind": s.label_kind, "provenance": s.provenance}
    tensors = {"images": s.images, "labels": s.labels}
    header = {"ddnb_kind": sm.FILE_KIND, "ddnb_format_version": "1", "ddnb_meta": json.dumps(meta),
              "sha256": sm._tensor_digest(tensors)}  # format 1: the checksum covers the tensors only
    path = tmp_path / "old.safetensors"
    path.write_bytes(safetensors.torch.save(tensors, metadata=header))
    with pytest.warns(UserWarning, match=r"old\.safetensors.*format 1.*metadata"):
        back = SyntheticSet.load(path)
    assert back.images.equal(s.images) and back.num_classes == 3


def _craft(path, images, labels, **meta):
    """A set file with a valid checksum but the given content (a buggy writer's or an attacker's)."""
    from ddnb.synset import FILE_KIND, save_tensor_file

    record = {"dataset": "digits", "num_classes": 10, "image_shape": [1, 8, 8], "factor": 1, "label_kind": "hard",
              "provenance": {}, **meta}
    return save_tensor_file(path, {"images": images, "labels": labels}, record, FILE_KIND)


@pytest.mark.parametrize("images, meta, words", [
    (torch.full((10, 1, 8, 8), float("nan")), {}, "640 of its 640 pixel values are NaN or inf"),
    (torch.cat([torch.full((1, 1, 8, 8), float("inf")), torch.zeros(9, 1, 8, 8)]), {}, "64 of its 640 pixel"),
    (torch.zeros(0, 1, 8, 8), {}, "0 images"),
    (torch.zeros(10, 1, 8, 8, dtype=torch.float64), {}, "torch.float64; ddnb sets hold float32"),
    (torch.zeros(10, 1, 8, 8, dtype=torch.int64), {}, "torch.int64"),
    (torch.zeros(10, 1, 8, 8), {"image_shape": [1, 8]}, "three positive ints, got [1, 8]"),
    (torch.zeros(10, 1, 8, 8), {"image_shape": [1, 8, 8.5]}, "got [1, 8, 8.5]"),
    (torch.zeros(10, 1, 8, 8), {"image_shape": [True, 8, 8]}, "got [True, 8, 8]"),
    (torch.zeros(10, 1, 8, 8), {"image_shape": None}, "got None"),
    (torch.zeros(10, 1, 8, 8), {"image_shape": "abc"}, "got 'abc'"),
    (torch.zeros(10, 1, 8, 8), {"image_shape": 64}, "got 64"),
])
def test_load_refuses_a_checksummed_set_with_bad_content(tmp_path, images, meta, words):
    labels = torch.arange(len(images)) % 10
    path = _craft(tmp_path / "bad.safetensors", images, labels, **meta)
    with pytest.raises(ValueError) as err:
        SyntheticSet.load(path)
    assert str(path) in str(err.value) and words in str(err.value)


@pytest.mark.parametrize("shape", [(1, 8, 8.5), (True, 8, 8), (1, 8), "abc", 64, None, (1, 0, 8)])
def test_image_shape_must_be_three_positive_ints(shape):
    with pytest.raises(ValueError, match="image_shape must be \\(C, H, W\\): three positive ints"):
        SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), "digits", 10, shape)


def test_load_names_a_folder_or_a_device_and_save_never_replaces_them(tmp_path):
    syn = SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), "digits", 10, (1, 8, 8))
    with pytest.raises(ValueError, match="is a folder; give the path of a ddnb.SyntheticSet"):
        SyntheticSet.load(tmp_path)
    with pytest.raises(ValueError, match="is not a regular file"):
        SyntheticSet.load("/dev/null")
    with pytest.raises(ValueError, match="path must be a file path, got NoneType"):
        SyntheticSet.load(None)
    with pytest.raises(ValueError, match="is a folder and is never replaced"):
        syn.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_to_checks_the_device():
    syn = SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), "digits", 10, (1, 8, 8))
    with pytest.raises(ValueError, match="device 'meta' is not one ddnb runs on"):
        syn.to("meta")
