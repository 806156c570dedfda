"""CAD-Prune: the compute-aligned epoch by hand, the scores of that checkpoint against a run trained by hand,
the early-checkpoint arm, caching."""
from __future__ import annotations

import pytest
import torch

import ddnb
import ddnb.methods.cad_prune as cp
from ddnb.methods.cad_prune import compute_aligned_epochs
from ddnb.models import get_model
from ddnb.score_kinds import el2n_values
from ddnb.train import train_model

KW = dict(model_kw={"width": 8}, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    return ddnb.load_dataset("digits")


def test_compute_aligned_epochs_by_hand():
    # 004's example: 200 epochs on IPC 50 of ImageNet-1K (50,000 images) vs 1,281,167 training images -> 7.8 -> 8
    assert compute_aligned_epochs(200, 50_000, 1_281_167) == 8
    assert compute_aligned_epochs(300, 100, 60_000) == 1  # 0.5 epochs: at least one
    assert compute_aligned_epochs(300, 500, 60_000) == 3  # 2.5 rounds half up
    with pytest.raises(ValueError, match="set_size"):
        compute_aligned_epochs(300, 0, 60_000)


def test_aligned_checkpoint_scores_are_el2n_of_a_run_of_that_length(digits, tmp_path):
    ipc, epochs = 5, 60
    n = len(digits.x_train)
    at = compute_aligned_epochs(epochs, ipc * 10, n)
    assert at == round(epochs * ipc * 10 / n) and at >= 2
    syn, idx = ddnb.select("cad_prune", digits, ipc, seed=3, epochs=epochs, cache_dir=tmp_path, **KW)
    assert syn.provenance["scores"]["at_epoch"] == at == syn.provenance["scores"]["run_epochs"]
    # by hand: a fresh seeded model trained `at` epochs (cosine over `at`), EL2N at its end, hardest 5 per class
    torch.manual_seed(3)
    model = get_model("convnet3", 1, 10, 8, width=8)
    train_model(model, digits.x_train, digits.y_train, epochs=at, lr=0.01, momentum=0.9, weight_decay=5e-4,
                batch_size=64, schedule="cosine", dsa=False, seed=3)
    el2n = el2n_values(model, digits.x_train, digits.y_train).double()
    expected = torch.cat([c[torch.sort(-el2n[c], stable=True).indices[:ipc]] for c in
                          [torch.nonzero(digits.y_train == k).view(-1) for k in range(10)]])
    assert idx.tolist() == expected.tolist()


def test_early_checkpoint_of_a_longer_run_differs_and_cache_is_used(digits, tmp_path, monkeypatch):
    kw = dict(seed=0, epochs=60, cache_dir=tmp_path, **KW)
    aligned, a_idx = ddnb.select("cad_prune", digits, 5, **kw)
    early, e_idx = ddnb.select("cad_prune", digits, 5, checkpoint="early", long_epochs=20, **kw)
    assert early.provenance["scores"]["run_epochs"] == 20
    assert early.provenance["scores"]["at_epoch"] == aligned.provenance["scores"]["at_epoch"]
    assert a_idx.tolist() != e_idx.tolist()  # same epoch, different lr schedule -> different scores

    def no_training(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cp, "checkpoint_el2n", no_training)
    _, again_idx = ddnb.select("cad_prune", digits, 5, **kw)
    assert again_idx.tolist() == a_idx.tolist()
    with pytest.raises(ValueError, match="long_epochs"):
        ddnb.select("cad_prune", digits, 5, checkpoint="early", long_epochs=1, **kw)
