"""Score-based selection and SelMatch's window against references written the official code's way
(Python sorted per class, slices), the oracle window's validation split, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddnb.data import load_dataset, stratified_split
from ddnb.methods import select
from ddnb.methods.selection import oracle_window, validation_split, window_split
from ddnb.scores import Scores


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def official_window(score: np.ndarray, labels: np.ndarray, ipc: int, alpha: float, beta: float, reverse: bool):
    """SelMatch distill.py written out: per class sorted by score (reverse for forgetting), sliced."""
    cpc = int(ipc * alpha)
    spc, ths = ipc - cpc, int(ipc * beta)
    real, distill = [], []
    for c in range(10):
        members = [i for i in range(len(labels)) if labels[i] == c]
        ranked = sorted(members, key=lambda i: score[i], reverse=reverse)
        real += ranked[ths:ths + spc]
        distill += ranked[ths + spc:ths + spc + cpc]
    return real, distill


def test_window_takes_the_right_ranks_of_a_hand_made_ranking():
    ranking = [torch.arange(100, 120), torch.arange(200, 220)]
    real, distill = window_split(ranking, ipc=10, alpha=0.3, beta=0.5)
    assert real.tolist() == [105, 106, 107, 108, 109, 110, 111, 205, 206, 207, 208, 209, 210, 211]
    assert distill.tolist() == [112, 113, 114, 212, 213, 214]
    real, distill = window_split(ranking, ipc=10, alpha=0.0, beta=1.0)  # beta 1: the next window
    assert real.tolist() == list(range(110, 120)) + list(range(210, 220)) and distill.numel() == 0
    real, _ = window_split([torch.arange(300)], ipc=100, alpha=0.0, beta=0.29)  # int(100 * 0.29) == 28
    assert int(real[0]) == 28


@pytest.mark.parametrize("kind, reverse", [("forgetting", True), ("cscore", False)])
def test_window_selection_matches_the_official_code(digits, kind, reverse):
    rng = np.random.default_rng(1)
    score = rng.integers(0, 6, len(digits.x_train)).astype(float)  # many ties, as forgetting counts have
    scores = Scores.from_values(digits, kind, score)
    synset, real = select("window", digits, 12, beta=0.4, alpha=0.25, score=kind, scores=scores)
    ref_real, ref_distill = official_window(score, digits.y_train.numpy(), 12, 0.25, 0.4, reverse)
    assert real.tolist() == ref_real
    assert synset.provenance["distill_indices"] == ref_distill
    assert synset.provenance["window"] == {"beta": 0.4, "alpha": 0.25, "start": 4, "n_real": 9, "n_distill": 3}
    assert torch.equal(synset.images, digits.x_train[real]) and synset.class_counts() == [9] * 10


@pytest.mark.parametrize("kind", ["forgetting", "el2n", "grand", "logits", "cscore"])
def test_ranked_selection_takes_the_hardest_or_easiest_per_class(digits, kind):
    rng = np.random.default_rng(2)
    score = rng.normal(size=len(digits.x_train))
    scores = Scores.from_values(digits, kind, score)
    higher_is_harder = kind not in ("logits", "cscore")
    y = digits.y_train.numpy()
    for order in ("hard", "easy"):
        _, idx = select(kind, digits, 4, order=order, scores=scores)
        descending = (order == "hard") == higher_is_harder
        ref = []
        for c in range(10):
            members = np.flatnonzero(y == c)
            ref += sorted(members, key=lambda i: score[i], reverse=descending)[:4]
        assert idx.tolist() == ref


def test_oracle_window_sweeps_on_a_split_of_the_training_set(digits):
    part, kept = validation_split(digits, 0.25, 0)
    _, held = stratified_split(digits.y_train, 0.25, 0)
    assert torch.equal(part.x_val, digits.x_train[held]) and len(part.x_train) + len(held) == len(digits.x_train)
    rng = np.random.default_rng(3)
    scores = Scores.from_values(part, "forgetting", rng.integers(0, 4, len(part.x_train)))
    beta, table = oracle_window(digits, 5, betas=[0.0, 1.0], scores=scores, val_fraction=0.25, eval_seeds=1,
                                epochs=3, progress=False)
    assert list(table["beta"]) == [0.0, 1.0] and list(table["start"]) == [0, 5]
    assert beta == float(table.loc[table["val_acc_mean"].idxmax(), "beta"])
    synset, idx = select("oracle_window", digits, 5, betas=[0.0, 1.0], scores=scores, val_fraction=0.25,
                         eval_seeds=1, epochs=3)
    assert not set(idx.tolist()) & set(held.tolist())  # never a validation image
    assert [r["beta"] for r in synset.provenance["sweep"]] == [0.0, 1.0]
    assert synset.provenance["window"]["beta"] == beta


def test_bad_input_is_one_clear_error(digits):
    scores = Scores.from_values(digits, "forgetting", np.zeros(len(digits.x_train)))
    with pytest.raises(ValueError, match=r"alpha must be a finite number >= 0 and <= 1, got 1.5"):
        select("window", digits, 5, alpha=1.5, scores=scores)
    with pytest.raises(ValueError, match=r"beta must be a finite number >= 0 and <= 1, got -0.1"):
        select("window", digits, 5, beta=-0.1, scores=scores)
    with pytest.raises(ValueError, match=r"ipc=80 with beta=0.5 \(a window over ranks 40..119\) needs 120 scored "
                                         r"images per class but the smallest class has \d+"):
        select("window", digits, 80, beta=0.5, scores=scores)
    with pytest.raises(ValueError, match=r"alpha=1 leaves no real images"):
        select("window", digits, 5, alpha=1, scores=scores)
    with pytest.raises(ValueError, match=r"score must be one of 'forgetting'.*got 'hardness'"):
        select("window", digits, 5, score="hardness", scores=scores)
    with pytest.raises(ValueError, match=r"scores of kind 'forgetting' given where 'el2n' scores are needed"):
        select("el2n", digits, 5, scores=scores)
    with pytest.raises(ValueError, match=r"order must be one of 'easy', 'hard', got 'middle'"):
        select("forgetting", digits, 5, order="middle", scores=scores)
    with pytest.raises(ValueError, match=r"computed for 'digits' with 1198 training images, not for 'digits' with 600"):
        select("forgetting", digits.subset(torch.arange(600)), 5, scores=scores)
    with pytest.raises(ValueError, match=r"computed for 'digits' with 1198 training images, not for 'digits' with"):
        oracle_window(digits, 5, scores=scores, epochs=1)  # scores of the whole set, not the carved training part
