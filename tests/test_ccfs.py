"""CCFS (000 Alg. 1): each phase takes exactly the k_j simplest misclassified images per class, never
one chosen before, minus the ones the teacher gets wrong; phase records match; set size; bad input;
and a real run on digits (size IPC per class, records in History and provenance, cached filters)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import ddnb
from ddnb.data import Dataset
from ddnb.methods import ccfs
from ddnb.scores import Scores

K, PER_CLASS, N_TEST = 3, 20, 6
N = K * PER_CLASS


class Stub(nn.Module):
    """A 'model' whose logits are a fixed table row, looked up by the index written in pixel (0, 0, 0)."""

    def __init__(self, pred: torch.Tensor):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.table = torch.nn.functional.one_hot(pred, K).float() * 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].round().long()] + 0 * self.dummy


def toy() -> Dataset:
    """60 training images (3 classes x 20, interleaved) and 6 test images; pixel (0, 0, 0) holds the index."""
    x = torch.zeros(N + N_TEST, 1, 4, 4)
    x[:, 0, 0, 0] = torch.arange(N + N_TEST).float()
    y = torch.arange(N + N_TEST) % K
    return Dataset("toy", x[:N], y[:N], x[N:], y[N:], ["a", "b", "c"], (0.0,), (1.0,), "test")


def forgetting(data: Dataset) -> Scores:
    """Distinct forgetting scores (a seeded permutation): the ranking has no ties."""
    order = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    return Scores.from_values(data, "forgetting", order.double())


def settings(**kw) -> dict:
    return {**ccfs.BUDGETS["smoke"], "protocol": "hl", **kw}


def phase_predictions(data: Dataset, phases: int, wrong: float = 0.6) -> list[torch.Tensor]:
    """Per phase, predictions (train then test rows) wrong on a seeded `wrong` share of the images."""
    y = torch.cat([data.y_train, data.y_test])
    out = []
    for j in range(phases):
        flip = torch.rand(len(y), generator=torch.Generator().manual_seed(10 + j)) < wrong
        out.append(torch.where(flip, (y + 1) % K, y))
    return out


def run(data, preds, ks, teacher_pred=None, **kw):
    """The curriculum with stub filters (phase j predicts preds[j - 1]) from an empty start."""
    s = settings(teacher_correct=teacher_pred is not None, **kw)
    ctx = ccfs.context(data, s, 0, "cpu", fit_filter=lambda x, y, j: Stub(preds[j - 1]), scores=forgetting(data),
                       teacher_model=Stub(teacher_pred) if teacher_pred is not None else None)
    return ccfs.curriculum(ctx, data.x_train[:0], data.y_train[:0], torch.zeros(0, dtype=torch.long), ks)


def expected(data, preds, ks, allowed=None):
    """Alg. 1 by hand: per phase and class, the k_j lowest-forgetting misclassified images not taken (and allowed)."""
    score = forgetting(data).values
    taken, phases = set(), []
    for pred, k in zip(preds, ks):
        picks = []
        for c in range(K):
            cand = [i for i in range(N) if data.y_train[i] == c and pred[i] != c and i not in taken
                    and (allowed is None or allowed[i])]
            picks += sorted(cand, key=lambda i: float(score[i]))[:k]
        taken |= set(picks)
        phases.append(picks)
    return phases


def test_each_phase_takes_the_k_simplest_misclassified_never_twice():
    data, ks = toy(), [3, 2, 2]
    preds = phase_predictions(data, 3)
    chosen, records = run(data, preds, ks)
    want = expected(data, preds, ks)
    assert [r["indices"] for r in records] == want
    assert chosen.tolist() == sum(want, [])
    assert len(set(chosen.tolist())) == len(chosen)  # never one chosen before
    assert torch.bincount(data.y_train[chosen], minlength=K).tolist() == [sum(ks)] * K
    assert all(r["filled"] == [0] * K for r in records)


def test_phase_records_match_the_selections():
    data, ks = toy(), [3, 2, 2]
    preds = phase_predictions(data, 3)
    _, records = run(data, preds, ks)
    score, taken = forgetting(data).values, torch.zeros(N, dtype=torch.bool)
    for r, pred, k in zip(records, preds, ks):
        mis = pred[:N] != data.y_train
        assert r["k"] == k and r["scores"] == score[r["indices"]].tolist()
        assert r["n_mis"] == int((mis & ~taken).sum())
        assert r["filter_train_acc"] == pytest.approx(100 * float((~mis).double().mean()))
        assert r["filter_test_acc"] == pytest.approx(100 * float((pred[N:] == data.y_test).double().mean()))
        taken[r["indices"]] = True


def test_teacher_correct_condition_removes_what_the_teacher_gets_wrong():
    data, ks = toy(), [3, 2, 2]
    preds = phase_predictions(data, 3)
    free = expected(data, preds, ks)
    teacher_wrong = torch.tensor([free[0][0], free[0][3], free[1][1]])  # images the unconditioned run would pick
    y = torch.cat([data.y_train, data.y_test])
    teacher_pred = y.clone()
    teacher_pred[teacher_wrong] = (y[teacher_wrong] + 1) % K
    chosen, records = run(data, preds, ks, teacher_pred=teacher_pred)
    allowed = (teacher_pred[:N] == data.y_train).tolist()
    assert [r["indices"] for r in records] == expected(data, preds, ks, allowed)
    assert not set(teacher_wrong.tolist()) & set(chosen.tolist())
    assert all(r["n_candidates"] < r["n_mis"] for r in records[:1])


def test_fine_and_coarse_ablations():
    data, ks = toy(), [4]
    pred = phase_predictions(data, 1)
    score = forgetting(data).values
    hard = run(data, pred, ks, fine="hard")[1][0]["indices"]
    classified = run(data, pred, ks, coarse="classified")[1][0]["indices"]
    for c in range(K):
        mis = [i for i in range(N) if data.y_train[i] == c and pred[0][i] != c]
        right = [i for i in range(N) if data.y_train[i] == c and pred[0][i] == c]
        assert hard[4 * c:4 * c + 4] == sorted(mis, key=lambda i: -float(score[i]))[:4]
        assert classified[4 * c:4 * c + 4] == sorted(right, key=lambda i: float(score[i]))[:4]
    rand = run(data, pred, ks, fine="random")[1][0]["indices"]
    assert all(pred[0][i] != data.y_train[i] for i in rand) and len(set(rand)) == 4 * K


def test_a_class_short_of_candidates_is_filled_and_recorded():
    data = toy()
    pred = data.y_train.clone()
    pred = torch.cat([pred, data.y_test])
    pred[[0, 3]] = 1  # class 0: only two misclassified images
    chosen, records = run(data, [pred], [4])
    assert records[0]["filled"] == [2, 4, 4]
    assert torch.bincount(data.y_train[chosen], minlength=K).tolist() == [4] * K
    assert {0, 3} <= set(chosen.tolist())


def test_phase_sizes_give_ipc_per_class():
    assert ccfs.phase_sizes(50, 0.2, 3) == (10, [14, 13, 13])
    assert ccfs.phase_sizes(10, 0.3, 3) == (3, [3, 2, 2])
    assert ccfs.phase_sizes(30, 0.1, 1) == (3, [27])


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=1.5), r"alpha=1\.5 .*allowed: a finite number >= 0 and <= 1"),
    (dict(curricula=0), r"curricula=0 .*allowed: an int >= 1"),
    (dict(base="nope"), r"base='nope' is not a registered distiller; allowed: .*dm"),
    (dict(score="el2n"), r"score='el2n' .*allowed: one of 'forgetting', 'logits', 'cscore'"),
    (dict(curricula=3, alpha=0.2, ipc=3), r"k_j = floor\(2/3\) = 0, so phases 3\.\.3"),
    (dict(alpha=1.0), r"leaves 0 real images"),
])
def test_bad_input_is_one_clear_error(kw, match):
    ipc = kw.pop("ipc", 10)
    with pytest.raises(ValueError, match=match):
        ddnb.distill("ccfs", ddnb.load_dataset("digits"), ipc, budget="smoke", **kw)


def test_ccfs_on_digits_records_phases_and_reuses_filters(tmp_path, monkeypatch):
    monkeypatch.setenv("DDNB_CACHE", str(tmp_path))
    data = ddnb.load_dataset("digits")
    syn, hist = ddnb.distill("ccfs", data, 8, budget="smoke", progress=False, epochs=2)
    assert syn.class_counts() == [8] * 10 and syn.provenance["n_distill"] == 2
    assert syn.provenance["phases"] == hist.records and [r["phase"] for r in hist.records] == [1, 2, 3]
    assert hist.iterations == 3 and hist.evals == []  # one loop iteration per phase; no in-loop evaluation
    assert sum((r["indices"] for r in hist.records), []) == syn.provenance["real_indices"]
    assert torch.equal(syn.images[20:], data.x_train[syn.provenance["real_indices"]])
    filters = tmp_path / "ccfs" / "filters"
    assert len(list(filters.iterdir())) == 3
    _, other = ddnb.distill("ccfs", data, 8, budget="smoke", progress=False, epochs=2, fine="hard")
    assert len(list(filters.iterdir())) == 5  # phase 1 trains on the same distilled start: reused
    assert other.records[0]["filter_train_acc"] == hist.records[0]["filter_train_acc"]
    sel, idx = ddnb.select("self_evolved", data, 8, budget="smoke", settings={"epochs": 2})
    assert sel.class_counts() == [8] * 10 and len(set(idx.tolist())) == 80
    assert sel.provenance["window"]["indices"] == idx[:20].tolist()


def test_base_iterations_replace_the_base_budgets_count(tmp_path, monkeypatch):
    monkeypatch.setenv("DDNB_CACHE", str(tmp_path))
    data = ddnb.load_dataset("digits")
    s = {**ccfs.BUDGETS["smoke"], "base_iterations": 3}
    start = ccfs.distilled_start(data, s, 2, 0, "cpu")
    direct, hist = ddnb.distill("dm", data, 2, budget="smoke", seed=0, device="cpu", progress=False, iterations=3)
    assert hist.iterations == 3
    assert torch.equal(start.images, direct.images)
    default = ccfs.distilled_start(data, {**s, "base_iterations": None}, 2, 0, "cpu")
    assert not torch.equal(default.images, direct.images)  # the smoke budget's own 20 iterations, another cache entry


def test_teacher_correct_is_cached_for_a_trained_teacher_and_filters_key_the_test_split(tmp_path, monkeypatch):
    from ddnb.analysis_labels import test_subset
    from ddnb.methods import ccfs_phases

    monkeypatch.setenv("DDNB_CACHE", str(tmp_path))
    data = ddnb.load_dataset("digits")
    s = ccfs.BUDGETS["smoke"]
    ctx = ccfs.context(data, s, 0, "cpu")
    ok = ccfs_phases.teacher_correct(ctx)
    pred = ctx.teacher(data.x_train[ctx.universe]).argmax(1)  # by hand: the teacher's argmax on the candidates
    outside = torch.ones(len(ok), dtype=torch.bool)
    outside[ctx.universe] = False
    assert torch.equal(ok[ctx.universe], pred == data.y_train[ctx.universe]) and not ok[outside].any()
    assert len(list((tmp_path / "ccfs" / "teacher_correct").iterdir())) == 1

    def no_forward(*args):
        raise AssertionError("the cached teacher_correct was recomputed")

    monkeypatch.setattr(ccfs_phases, "universe_logits", no_forward)
    assert torch.equal(ccfs_phases.teacher_correct(ccfs.context(data, s, 1, "cpu")), ok)  # another run: the cache
    given = ccfs.context(data, s, 0, "cpu", teacher_model=ctx.teacher)  # a given teacher is never cached
    with pytest.raises(AssertionError, match="recomputed"):
        ccfs_phases.teacher_correct(given)
    monkeypatch.undo()
    monkeypatch.setenv("DDNB_CACHE", str(tmp_path))
    x0, y0 = data.x_train[:20], data.y_train[:20]
    ccfs_phases.filter_outputs(ctx, x0, y0, 1)
    small = ccfs.context(test_subset(data, 5, 0), s, 0, "cpu")
    ccfs_phases.filter_outputs(small, x0, y0, 1)  # the same filter tested on another split: its own cache entry
    assert len(list((tmp_path / "ccfs" / "filters").iterdir())) == 2
