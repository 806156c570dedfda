"""Atomic writes, seeding and device resolution."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ddnb import utils


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.json"
    utils.atomic_save_json(path, {"x": 1, "t": torch.tensor([1.5])})
    utils.atomic_save_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert os.listdir(path.parent) == ["a.json"]


def test_atomic_write_keeps_old_file_when_serialization_fails(tmp_path):
    path = tmp_path / "a.json"
    utils.atomic_save_json(path, {"x": 1})
    with pytest.raises(TypeError):
        utils.atomic_save_json(path, {"x": object()})
    assert json.loads(path.read_text()) == {"x": 1}


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_gives_the_mode_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        utils.atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as fh:  # what a plain write makes under this umask
            fh.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777


def test_seed_everything_repeats_and_rejects_bad_seed():
    g1 = utils.seed_everything(3)
    a = torch.rand(3, generator=g1), torch.rand(3)
    g2 = utils.seed_everything(3)
    b = torch.rand(3, generator=g2), torch.rand(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="seed"):
        utils.seed_everything(-1)


def test_resolve_device():
    assert utils.resolve_device("cpu") == torch.device("cpu")
    assert utils.resolve_device(None) == torch.device(utils.default_device())
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            utils.resolve_device("cuda")


@pytest.mark.parametrize("device, words", [
    ("tpu", "is not a device name"), ("cpu:x", "is not a device name"), ("", "is not a device name"),
    ("meta", "is not one ddnb runs on"), (torch.device("meta"), "is not one ddnb runs on"),
    ("cuda:99", "'cuda:99'"), (5, "got int 5"), (["cpu"], "got list"), (True, "got bool"),
])
def test_resolve_device_names_the_value_and_what_is_allowed(device, words):
    with pytest.raises(ValueError) as err:
        utils.resolve_device(device)
    assert words in str(err.value) and "allowed: cpu" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**70, 1.5, "a", None, True])
def test_seed_everything_names_a_seed_out_of_range(seed):
    with pytest.raises(ValueError, match=f"seed must be an int >= 0 and <= {2**63 - 1}, got"):
        utils.seed_everything(seed)


def test_check_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    assert utils.check_writable(tmp_path / "new" / "deeper" / "x.bin") == tmp_path / "new" / "deeper" / "x.bin"
    assert not (tmp_path / "new").exists()  # the probe makes no folders
    assert utils.check_writable(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # and leaves no probe file
    with pytest.raises(ValueError, match="'.*file' is a file, not a folder"):
        utils.check_writable(tmp_path / "file" / "x.bin", "--out")
    with pytest.raises(ValueError, match="--out path is empty"):
        utils.check_writable("", "--out")
    with pytest.raises(ValueError, match="'/proc' is not writable"):
        utils.check_writable("/proc/ddnb_test/x.bin")


def test_atomic_write_never_replaces_a_folder_or_a_pipe(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    (tmp_path / "folder").mkdir()
    for path, words in ((pipe, "not a regular file"), (tmp_path / "folder", "is a folder")):
        with pytest.raises(ValueError, match=words):
            utils.atomic_write_bytes(path, b"data")
    assert pipe.is_fifo() and (tmp_path / "folder").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "pipe"]


def test_to_device_keeps_values_and_is_a_no_op_move_on_the_cpu():
    from ddnb.utils import to_device

    t = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    moved = to_device(t, "cpu")
    assert moved.device.type == "cpu" and torch.equal(moved, t)
    if torch.cuda.is_available():  # pinned, non-blocking: the same values once the stream has run
        assert torch.equal(to_device(t, "cuda").cpu(), t)
