"""Notebook 05's pieces: accuracy curves within one training, the evaluation and set caches, degenerate sets,
DM's loss of a set, and the small measurements (spread per seed, flattening, gains, fit gaps, test subsets)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ddnb
from ddnb import analysis_labels as al
from ddnb import evalcache
from ddnb.matching import mean_feature_loss
from ddnb.models import seeded_model


@pytest.fixture(scope="module")
def digits():
    return ddnb.load_dataset("digits")


@pytest.fixture(scope="module")
def small_set(digits):
    return ddnb.select("random", digits, ipc=2, seed=0)[0]


@pytest.mark.parametrize("batched", [True, False])
def test_curve_points_equal_separate_shorter_trainings(digits, small_set, batched):
    # constant lr: the model after e of 4 epochs is the model of a separate e-epoch training (same seed)
    kw = dict(seeds=[0, 1], protocol="hl", dsa=False, schedule="constant", progress=False, batched=batched)
    res = ddnb.evaluate_synset(small_set, digits, epochs=4, curve_epochs=[2, 4], **kw)
    short = ddnb.evaluate_synset(small_set, digits, epochs=2, **kw)
    assert sorted(res.curve) == [2, 4]
    np.testing.assert_allclose(res.curve[2], short.per_seed, atol=1e-9)
    assert res.curve[4] == res.per_seed


def test_curve_epochs_must_lie_within_training(digits, small_set):
    with pytest.raises(ValueError, match=r"curve_epochs must be ints in 1\.\.3 .*got 5"):
        ddnb.evaluate_synset(small_set, digits, seeds=1, epochs=3, curve_epochs=[1, 5], progress=False)


def test_cached_evaluate_second_call_is_a_cache_hit(digits, small_set, tmp_path, monkeypatch):
    kw = dict(seeds=[0, 1], epochs=2, protocol="hl", curve_epochs=[1, 2], progress=False)
    first = evalcache.cached_evaluate(small_set, digits, tmp_path, **kw)
    assert len(list(tmp_path.glob("*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("evaluate_synset ran although the result is cached")

    monkeypatch.setattr(ddnb.train, "evaluate_synset", no_training)
    again = evalcache.cached_evaluate(small_set, digits, tmp_path, **kw)
    assert again == first and again.curve[1] == first.curve[1]
    with pytest.raises(AssertionError, match="although the result is cached"):  # other settings: another key
        evalcache.cached_evaluate(small_set, digits, tmp_path, **{**kw, "epochs": 3, "curve_epochs": None})
    with pytest.raises(AssertionError, match="although the result is cached"):  # bf16 training: another key
        evalcache.cached_evaluate(small_set, digits, tmp_path, **{**kw, "precision": "bf16"})


def test_teacher_weights_are_part_of_the_key(digits, small_set):
    t0, t1 = seeded_model("convnet3", digits, 0), seeded_model("convnet3", digits, 1)
    keys = [evalcache.eval_config(small_set, digits, "convnet3", [0], 2, None, "sl+kd", None, None, {"teacher": t})
            for t in (t0, t0, t1)]
    assert keys[0] == keys[1] and keys[0]["teacher"] != keys[2]["teacher"]


def test_cached_set_builds_once(digits, tmp_path):
    calls = []

    def make():
        calls.append(1)
        return ddnb.select("random", digits, ipc=1, seed=3)[0]

    a = evalcache.cached_set({"set": "random", "ipc": 1, "seed": 3}, make, tmp_path)
    b = evalcache.cached_set({"set": "random", "ipc": 1, "seed": 3}, make, tmp_path)
    assert len(calls) == 1 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="config must be a non-empty dict"):
        evalcache.cached_set({}, make, tmp_path)


def test_duplicate_each_repeats_the_first_images_of_each_class(digits):
    syn = ddnb.select("random", digits, ipc=3, seed=0)[0]
    dup = al.duplicate_each(syn, 2)
    expected = []
    for c in range(digits.num_classes):
        rows = [i for i in range(len(syn.labels)) if int(syn.labels[i]) == c][:2]
        expected += [rows[0], rows[0], rows[1], rows[1]]
    assert torch.equal(dup.images, syn.images[expected]) and torch.equal(dup.labels, syn.labels[expected])
    with pytest.raises(ValueError, match=r"per_class=4 but class 0 of the set has 3 images"):
        al.duplicate_each(syn, 4)


def test_dm_loss_against_a_direct_per_class_computation(digits):
    sets = {"a": ddnb.select("random", digits, ipc=2, seed=0)[0], "b": ddnb.select("random", digits, ipc=3, seed=1)[0]}
    got = al.dm_loss(sets, digits, nets=2, real_per_class=5, seed=4)
    for name, syn in sets.items():
        total = 0.0
        for j in range(2):
            net = seeded_model("convnet3", digits, 4 + j).eval()
            g = torch.Generator().manual_seed(4 + j)
            with torch.no_grad():
                for c, members in enumerate(digits.class_indices()):
                    real = digits.x_train[members[torch.randperm(len(members), generator=g)[:5]]]
                    total += float(mean_feature_loss(net.embed(real), net.embed(syn.images[syn.labels == c])))
        assert got[name] == pytest.approx(total / 2, rel=1e-4)
    b = sets["b"]
    half = ddnb.SyntheticSet(b.images.reshape(10, 3, 1, 8, 8)[:, :2].reshape(20, 1, 8, 8),
                             b.labels.reshape(10, 3)[:, :2].reshape(-1), "digits", 10, (1, 8, 8))
    doubled = al.dm_loss({"dup": al.duplicate_each(b, 2), "half": half}, digits, nets=1, real_per_class=5)
    assert doubled["dup"] == pytest.approx(doubled["half"], rel=1e-5)  # a mean does not see repetition


def test_small_measurements_by_hand():
    assert al.spread_per_seed({"a": [70, 60], "b": [50, 65], "c": [55, 61]}) == [20, 5]
    assert al.flatten_epoch([5, 10, 20, 50], [40, 60, 69.5, 70], tol=1.0) == 20
    assert al.flatten_epoch([5, 10], [40, 60], tol=1.0) == 10
    assert al.curve_gain({5: [40, 42], 10: [50, 47]}, 5) == [10, 5]
    with pytest.raises(ValueError, match=r"start=7 is not a curve epoch; allowed: \[5, 10\]"):
        al.curve_gain({5: [40], 10: [50]}, 7)
    boot = lambda v, s: {"fit": {"b": v}, "b": {"std": s, "low": v - s, "high": v + s}}  # noqa: E731
    assert al.fit_gap(boot(-0.5, 0.1), boot(-0.2, 0.05), "b")["verdict"] == "differ"
    assert al.fit_gap(boot(-0.5, 0.4), boot(-0.2, 0.05), "b")["verdict"] == "similar"


def test_test_subset_is_class_balanced(digits):
    sub = al.test_subset(digits, 7, seed=1)
    assert torch.bincount(sub.y_test, minlength=10).tolist() == [7] * 10
    assert al.test_subset(digits, None) is digits
    with pytest.raises(ValueError, match=r"per_class=1000 but class 0 has \d+ test images"):
        al.test_subset(digits, 1000)
