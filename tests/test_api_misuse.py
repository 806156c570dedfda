"""API misuse at the edges (distill, select, evaluate_synset, load_dataset): one ValueError that names
the value and what is allowed, raised before any work starts, instead of a raw TypeError/AttributeError."""
from __future__ import annotations

import re

import pytest
import torch

from ddnb.data import load_dataset
from ddnb.methods import distill, get_method, select
from ddnb.synset import SyntheticSet
from ddnb.train import evaluate_synset


@pytest.fixture(scope="module")
def data():
    """Digits on the CPU."""
    return load_dataset("digits", device="cpu")


@pytest.fixture(scope="module")
def synset(data):
    """A random-real digits set, ipc 1."""
    return select("random", data, 1)[0]


@pytest.fixture
def no_work(monkeypatch):
    """Make the DM entry point fail loudly if it is reached: a bad argument must fail before it."""
    def reached(*args, **kwargs):
        """Stands in for the method: reaching it means the check came too late."""
        raise AssertionError("the method ran although an argument was bad")

    monkeypatch.setattr(get_method("dm"), "fn", reached)


BAD_DATASETS = [("digits", "got 'digits'"), (None, "got None"), (torch.zeros(3), "got Tensor")]
BAD_SEEDS = [("a", "'a'"), (-1, "-1"), (2**70, str(2**70)), (1.5, "1.5"), (True, "True"), (None, "None")]
BAD_DEVICES = [("meta", "'meta'"), ("tpu", "'tpu'"), ("cuda:99", "'cuda:99'"), (5, "int 5")]


@pytest.mark.parametrize("value, words", BAD_DATASETS)
def test_distill_and_select_name_a_dataset_that_is_not_one(no_work, data, value, words):
    for call in (lambda: distill("dm", value, 1, budget="smoke"), lambda: select("random", value, 1)):
        with pytest.raises(ValueError, match=f"dataset must be a ddnb Dataset .*, {words}"):
            call()


@pytest.mark.parametrize("value, words", BAD_SEEDS)
def test_distill_and_select_name_a_bad_seed(no_work, data, value, words):
    for call in (lambda: distill("dm", data, 1, budget="smoke", seed=value),
                 lambda: select("herding", data, 1, seed=value)):
        with pytest.raises(ValueError) as err:
            call()
        assert f"seed must be an int >= 0 and <= {2**63 - 1}, got {words}" in str(err.value)


@pytest.mark.parametrize("value, words", BAD_DEVICES)
def test_every_selector_and_distill_check_the_device(no_work, data, value, words):
    for call in (lambda: distill("dm", data, 1, budget="smoke", device=value),
                 *[lambda m=m: select(m, data, 1, device=value) for m in ("random", "herding", "kcenter")]):
        with pytest.raises(ValueError, match="allowed: cpu") as err:
            call()
        assert words in str(err.value)


@pytest.mark.parametrize("ipc", ["1", 0, 1.0, None])
def test_distill_names_a_bad_ipc(no_work, data, ipc):
    with pytest.raises(ValueError, match=f"ipc must be an int >= 1, got {ipc!r}"):
        distill("dm", data, ipc, budget="smoke")


@pytest.mark.parametrize("option, value, words", [
    ("callback", 1, "callback must be None or a function"), ("resume", "yes", "resume must be true or false"),
    ("progress", 3, "progress must be true or false"), ("checkpoint_every", 0, "checkpoint_every must be"),
    ("eval_every", -1, "eval_every must be an int >= 0"), ("out_dir", 5, "out_dir must be None or a folder path"),
])
def test_distill_checks_run_options_before_running(no_work, data, option, value, words):
    with pytest.raises(ValueError, match=words):
        distill("dm", data, 1, budget="smoke", **{option: value})


def test_distill_refuses_a_file_as_checkpoint_folder(no_work, data, tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(ValueError, match="is a file; give a folder for the checkpoints"):
        distill("dm", data, 1, budget="smoke", out_dir=tmp_path / "f")
    assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.parametrize("budget", [None, 3, ["smoke"]])
def test_distill_names_a_budget_that_is_not_a_name(no_work, data, budget):
    with pytest.raises(ValueError, match=re.escape(f"unknown budget {budget!r} for method 'dm'")):
        distill("dm", data, 1, budget=budget)


def test_select_names_an_unknown_keyword(data):
    with pytest.raises(ValueError, match="unknown argument\\(s\\) 'nosuch' for selection method 'random'; "
                                         "allowed: arch"):
        select("random", data, 1, nosuch=1)


def test_select_returns_the_set_on_the_device_asked_for(data, monkeypatch):
    moved = []
    original = SyntheticSet.to

    def to(self, device):
        """Record where the set is moved."""
        moved.append(str(device))
        return original(self, device)

    monkeypatch.setattr(SyntheticSet, "to", to)
    syn, _ = select("random", data, 1, device="cpu")
    assert moved == ["cpu"] and syn.images.device.type == "cpu"
    select("random", data, 1)
    assert moved == ["cpu"]  # no device given: the set stays where the dataset is


@pytest.mark.parametrize("value, words", [(torch.zeros(10, 1, 8, 8), "got Tensor"), ("set.safetensors",
                                                                                      "got 'set.safetensors'"),
                                          (None, "got None")])
def test_evaluate_synset_names_what_is_not_a_synthetic_set(data, value, words):
    with pytest.raises(ValueError, match=f"synset must be a SyntheticSet .*{words}"):
        evaluate_synset(value, data, seeds=1, epochs=1, progress=False)


@pytest.mark.parametrize("value, words", BAD_DATASETS)
def test_evaluate_synset_names_data_that_is_not_a_dataset(synset, value, words):
    with pytest.raises(ValueError, match=f"dataset must be a ddnb Dataset .*, {words}"):
        evaluate_synset(synset, value, seeds=1, epochs=1, progress=False)


def test_evaluate_synset_refuses_a_set_with_other_classes(data, synset):
    other = SyntheticSet(synset.images, synset.labels, "digits", 11, synset.image_shape)
    with pytest.raises(ValueError, match="with 11 classes, but the data is 'digits' \\(1, 8, 8\\) with 10 classes"):
        evaluate_synset(other, data, seeds=1, epochs=1, progress=False)


@pytest.mark.parametrize("kwargs, words", [
    ({"device": "meta"}, "device 'meta'"), ({"device": "tpu"}, "device 'tpu'"), ({"seed": "a", "val_fraction": 0.1},
                                                                                   "seed must be"),
    ({"root": __file__}, "is a file"), ({"root": 5}, "root must be a folder path"),
])
def test_load_dataset_checks_its_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        load_dataset("digits", **kwargs)
