"""SelMatch (partial update: D_real frozen bit for bit, D_distill moved), the official window defaults,
two-shot selection against a stub model whose predictions the test chooses, and the three settings
of 000 §3.2 on tiny digits runs."""
from __future__ import annotations

import pytest
import torch

import ddnb
from ddnb import analysis_selmatch as an
from ddnb.data import load_dataset
from ddnb.methods.selmatch import official_window, real_rows
from ddnb.scores import Scores


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("base", ["dm", "mtt"])
@pytest.mark.parametrize("match_real", [True, False])
def test_selmatch_keeps_d_real_bit_for_bit_and_moves_d_distill(digits, base, match_real):
    syn, history = ddnb.distill("selmatch", digits, 4, budget="smoke", base=base, alpha=0.5, beta=0.5,
                                match_real=match_real, progress=False)
    mask = real_rows(syn)
    real_idx = torch.tensor(syn.provenance["real_indices"])
    pre_idx = torch.tensor(syn.provenance["distill_indices"])
    assert syn.images.shape[0] == 40 and int(mask.sum()) == 20 and len(pre_idx) == 20
    assert torch.equal(syn.images[mask], digits.x_train[real_idx])  # D_real: the window's real images, untouched
    moved = (syn.images[~mask] - digits.x_train[pre_idx]).flatten(1).abs().amax(1)
    assert bool((moved > 0).all())  # every D_distill image was updated
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(4)]
    assert torch.equal(digits.y_train[real_idx], syn.labels[mask])
    assert history.iterations > 0 and syn.provenance["window"] == {"alpha": 0.5, "beta": 0.5, "start": 2,
                                                                  "n_real": 2, "n_distill": 2}


def test_selmatch_real_part_is_harder_than_the_distilled_part(digits):
    syn, _ = ddnb.distill("selmatch", digits, 4, budget="smoke", alpha=0.5, beta=0.0, iterations=0, progress=False)
    scores = ddnb.compute_scores(digits, "forgetting", budget="smoke", progress=False)
    value = dict(zip(scores.indices.tolist(), scores.difficulty().tolist()))
    real, pre = syn.provenance["real_indices"], syn.provenance["distill_indices"]
    for c in range(10):
        assert min(value[i] for i in real[2 * c:2 * c + 2]) >= max(value[i] for i in pre[2 * c:2 * c + 2])


def test_official_window_by_share_of_class(digits):
    syn, _ = ddnb.distill("selmatch", digits, 6, budget="smoke", alpha=None, beta=None, iterations=0, progress=False)
    assert syn.provenance["window"] == {"alpha": 0.6, "beta": 0.5, "start": 3, "n_real": 3, "n_distill": 3}
    assert official_window(300, 6000) == (0.6, 0.5)  # Fashion-MNIST 5 % ~ CIFAR-10 IPC 250
    assert official_window(600, 6000) == (0.2, 0.3)  # 10 % ~ CIFAR-10 IPC 500
    assert official_window(1000, 5000) == (0.1, 0.2)
    assert ddnb.methods.get_method("selmatch").budgets["paper"]["alpha"] is None


@pytest.mark.parametrize("ipc, overrides, words", [
    (4, dict(alpha=0.1), ["alpha=0.1", "no image to distill", "1/ipc"]),
    (4, dict(beta=1.5), ["beta=1.5", "<= 1"]),
    (4, dict(score="nosuch"), ["score='nosuch'", "forgetting"]),
    (4, dict(base="dc"), ["base='dc'", "'mtt', 'dm'"]),
    (60, dict(beta=1.0), ["ipc=60 with beta=1.0", "needs 120 scored images", "116"]),
])
def test_selmatch_bad_settings_fail_with_one_clear_error(digits, ipc, overrides, words):
    with pytest.raises(ValueError) as err:
        ddnb.distill("selmatch", digits, ipc, budget="smoke", progress=False, **overrides)
    for word in words:
        assert word in str(err.value), str(err.value)


# ------------------------------------------------------------------ two-shot selection

class StubTrainer:
    """A Trainer whose models predict what the test says: `rounds[r]` (a class per training image) in round r."""

    def __init__(self, rounds: list[torch.Tensor]) -> None:
        self.rounds, self.trained_on = rounds, []

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        r = len(self.trained_on)
        self.trained_on.append((x.clone(), y.clone()))
        return lambda images: self.rounds[r][: len(images)]


def _toy(digits):
    """Scores 0..N-1 (image i has difficulty i: a lower index is simpler) over every training image."""
    n = len(digits.x_train)
    return Scores.from_values(digits, "forgetting", torch.arange(n, dtype=torch.float64))


def test_two_shot_selection_takes_only_misclassified_images_simplest_first(digits):
    scores, y = _toy(digits), digits.y_train.cpu()
    g = torch.Generator().manual_seed(0)
    wrong = [torch.rand(len(y), generator=g) < 0.3 for _ in range(2)]
    stub = StubTrainer([torch.where(w, (y + 1) % 10, y) for w in wrong])
    x0, y0 = digits.x_train[:5], y[:5]
    exclude = torch.nonzero(y == 0).view(-1)[:3]
    picked = an.two_shot_selection(digits, x0, y0, scores, 4, stub, shots=2, exclude=exclude)
    assert len(picked) == 40 and not bool(torch.isin(picked, exclude).any())
    assert len(set(picked.tolist())) == 40
    for c in range(10):
        first, second = picked[4 * c:4 * c + 2], picked[4 * c + 2:4 * c + 4]
        cand1 = [i for i in torch.nonzero((y == c) & wrong[0]).view(-1).tolist() if i not in exclude.tolist()]
        assert first.tolist() == cand1[:2]  # the two simplest misclassified of round 1
        cand2 = [i for i in torch.nonzero((y == c) & wrong[1]).view(-1).tolist()
                 if i not in exclude.tolist() and i not in first.tolist()]
        assert second.tolist() == cand2[:2]  # round 2: the simplest misclassified not yet taken
    x1, y1 = stub.trained_on[1]  # the second model trained on the set plus the first round's images
    assert len(x1) == 5 + 20 and torch.equal(x1[:5], x0)
    first_all = torch.cat([picked[4 * c:4 * c + 2] for c in range(10)])
    assert torch.equal(torch.sort(y1[5:]).values, torch.sort(y[first_all]).values)


def test_two_shot_selection_fills_a_short_class_with_its_hardest_correct_images(digits):
    scores, y = _toy(digits), digits.y_train.cpu()
    preds = y.clone()
    only_wrong = torch.nonzero(y == 3).view(-1)[5]
    preds[only_wrong] = 4
    picked = an.two_shot_selection(digits, digits.x_train[:2], y[:2], scores, 3, StubTrainer([preds, preds]))
    class3 = picked[9:12].tolist()
    members = torch.nonzero(y == 3).view(-1).tolist()
    assert class3 == [int(only_wrong), members[-1], members[-2]]


def test_two_shot_selection_refuses_more_than_the_pool_holds(digits):
    with pytest.raises(ValueError, match="needs 500 candidate images per class"):
        an.two_shot_selection(digits, digits.x_train[:2], digits.y_train[:2], _toy(digits), 500, StubTrainer([]))


# ------------------------------------------------------------------ the three settings

def test_three_settings_on_tiny_digits(digits):
    train = an.conv_trainer(epochs=1)
    sets = an.three_settings(digits, 4, 0.5, 0.25, train, budget="smoke", iterations=2)
    s1, s2, s3 = (sets[k] for k in an.SETTINGS)
    pre = torch.tensor(s1.provenance["distill_indices"])
    for s in sets.values():
        mask = real_rows(s)
        assert s.images.shape == (40, 1, 8, 8) and int(mask.sum()) == 20
        real = torch.tensor(s.provenance["real_indices"])
        assert torch.equal(s.images[mask], digits.x_train[real]) and torch.equal(s.labels[mask], digits.y_train[real])
        assert s.provenance["distill_indices"] == pre.tolist()
    assert torch.equal(s2.images[~real_rows(s2)], s1.images[~real_rows(s1)])  # setting 2 changes only D_real
    for s in (s2, s3):
        assert not bool(torch.isin(torch.tensor(s.provenance["real_indices"]), pre).any())
    assert s3.provenance["selected_against"] == "D_distill" and s3.provenance["params"]["match_real"] is False
    assert not torch.equal(s3.images[~real_rows(s3)], s1.images[~real_rows(s1)])  # distilled without D_real
    part = load_dataset("digits", val_fraction=0.2)
    view = an.validation_view(part)
    assert torch.equal(view.x_test, part.x_val) and len(view.x_train) == len(part.x_train)
    res = ddnb.evaluate_synset(s3, view, seeds=1, epochs=1, progress=False)
    assert 0 <= res.mean <= 100
    with pytest.raises(ValueError, match="no validation split"):
        an.validation_view(digits)


def test_beats_needs_a_gap_larger_than_the_spread():
    assert an.beats(80.0, 0.5, 78.0, 1.0)
    assert not an.beats(80.0, 2.5, 78.0, 1.0)
    assert not an.beats(78.0, 0.1, 80.0, 0.1)


def test_best_per_setting_picks_the_best_validation_row():
    import pandas as pd

    table = pd.DataFrame([
        {"ipc": 2, "alpha": 0.5, "beta": 0.0, "setting": "setting1", "val_mean": 50.0},
        {"ipc": 2, "alpha": 0.5, "beta": 1.0, "setting": "setting1", "val_mean": 60.0},
        {"ipc": 2, "alpha": 0.5, "beta": 0.0, "setting": "setting3", "val_mean": 70.0},
        {"ipc": 2, "alpha": 0.5, "beta": 1.0, "setting": "setting3", "val_mean": 70.0},
    ])
    best = an.best_per_setting(table)
    assert best[["setting", "beta"]].values.tolist() == [["setting1", 1.0], ["setting3", 0.0]]
