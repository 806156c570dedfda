"""Coreset selectors: herding and k-center against brute force, random/herding/kcenter on digits."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from ddnb.data import load_dataset
from ddnb.methods import select
from ddnb.methods.coreset import herding_indices, kcenter_indices


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def brute_force_herding(feats: np.ndarray, k: int) -> list[int]:
    """Herding written out literally: try every unchosen row, keep the one whose mean is closest."""
    mu = feats.mean(0)
    chosen: list[int] = []
    for _ in range(k):
        best, best_dist = -1, np.inf
        for i in range(len(feats)):
            if i in chosen:
                continue
            dist = np.linalg.norm(mu - feats[chosen + [i]].mean(0))
            if dist < best_dist:
                best, best_dist = i, dist
        chosen.append(best)
    return chosen


def covering_radius(feats: np.ndarray, centres) -> float:
    """Largest distance from any row to its nearest centre."""
    d = np.linalg.norm(feats[:, None, :] - feats[list(centres)][None, :, :], axis=2)
    return float(d.min(1).max())


@pytest.mark.parametrize("seed", range(6))
def test_herding_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(14, 3))
    k = int(rng.integers(1, 15))
    assert herding_indices(torch.tensor(feats), k).tolist() == brute_force_herding(feats, k)


def test_herding_all_rows_is_a_permutation():
    feats = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    assert sorted(herding_indices(feats, 9).tolist()) == list(range(9))


def test_kcenter_hand_worked():
    # points 0, 1, 2, 10 on a line: mean 3.25 -> nearest is 2 (row 2); farthest from it is 10 (row 3);
    # then the farthest from {2, 10} is 0 (row 0).
    feats = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert kcenter_indices(feats, 3).tolist() == [2, 3, 0]


@pytest.mark.parametrize("seed", range(8))
def test_kcenter_within_twice_the_optimal_radius(seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(10, 2)) * rng.uniform(0.5, 3.0, size=2)
    k = int(rng.integers(2, 5))
    chosen = kcenter_indices(torch.tensor(feats), k).tolist()
    assert len(set(chosen)) == k
    optimum = min(covering_radius(feats, c) for c in itertools.combinations(range(len(feats)), k))
    assert covering_radius(feats, chosen) <= 2 * optimum + 1e-12


@pytest.mark.parametrize("fn", [herding_indices, kcenter_indices])
@pytest.mark.parametrize("k", [0, 6, 2.0])
def test_feature_selectors_reject_bad_k(fn, k):
    with pytest.raises(ValueError, match="k must be"):
        fn(torch.zeros(5, 2), k)


def test_random_is_balanced_unique_and_seeded(digits):
    syn, idx = select("random", digits, 5, seed=3)
    assert len(idx) == len(set(idx.tolist())) == 5 * digits.num_classes
    assert torch.bincount(digits.y_train[idx.to(digits.y_train.device)].cpu()).tolist() == [5] * 10
    assert torch.equal(idx, select("random", digits, 5, seed=3)[1])
    assert not torch.equal(idx, select("random", digits, 5, seed=4)[1])
    assert torch.equal(syn.images.cpu(), digits.x_train[idx.to(digits.x_train.device)].cpu())


class Flatten(nn.Module):
    """A 'model' whose features are the raw pixels, so selections can be recomputed by hand."""

    def embed(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("method,pick", [("herding", herding_indices), ("kcenter", kcenter_indices)])
def test_feature_methods_select_per_class_in_model_space(digits, method, pick):
    _, idx = select(method, digits, 4, model=Flatten(), device="cpu")
    expected = []
    for cls_idx in digits.class_indices():
        cls_idx = cls_idx.cpu()
        expected.append(cls_idx[pick(digits.x_train[cls_idx].cpu().flatten(1), 4)])
    assert torch.equal(idx, torch.cat(expected))


@pytest.mark.parametrize("method", ["herding", "kcenter"])
def test_feature_methods_default_model_is_seeded_and_balanced(digits, method):
    state = torch.random.get_rng_state()
    syn, idx = select(method, digits, 3, seed=1, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(idx, select(method, digits, 3, seed=1, device="cpu")[1])
    assert torch.bincount(digits.y_train[idx.to(digits.y_train.device)].cpu()).tolist() == [3] * 10
    assert syn.provenance["method"] == method


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_ipc_larger_than_a_class_is_an_error(digits, method):
    smallest = min(len(i) for i in digits.class_indices())
    with pytest.raises(ValueError, match=rf"ipc={smallest + 1}.*{smallest}"):
        select(method, digits, smallest + 1)
