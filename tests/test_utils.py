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
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            utils.resolve_device("cuda")
