"""Difficulty scores against independent references: forgetting on hand-made sequences and a
literal training loop, EL2N / EL2N-SL against direct numpy computations, GraNd against a
per-example autograd loop, c-score and logits on a toy problem with one mislabeled image, the cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddnb.data import Dataset, load_dataset
from ddnb.models import get_model
from ddnb.score_kinds import forgetting_counts, grand_values, holdout_masks
from ddnb.scores import Scores, class_ranking, compute_scores


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def seeded_model(dataset, seed, arch="mlp", **kw):
    """The scoring model of seed `seed`, built here the plain way."""
    torch.manual_seed(seed)
    return get_model(arch, dataset.channels, dataset.num_classes, dataset.image_size, **kw)


def np_softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ----------------------------------------------------------------------------- forgetting
def test_forgetting_counts_on_a_hand_made_sequence():
    # rows: presentations; columns: examples
    seq = np.array([[1, 0, 0, 1, 1, 1],
                    [0, 0, 1, 1, 0, 1],
                    [1, 0, 1, 1, 0, 1],
                    [0, 0, 1, 1, 0, 1],
                    [1, 0, 1, 0, 0, 1]], dtype=bool)
    # ex0 forgets twice; ex1 is never learned (5 presentations); ex2 learns and keeps it; ex3 forgets at the
    # end; ex4 forgets once and never relearns; ex5 always correct
    assert forgetting_counts(torch.from_numpy(seq)).tolist() == [2, 5, 0, 1, 1, 0]


def test_forgetting_counts_match_a_literal_loop():
    rng = np.random.default_rng(0)
    seq = rng.random((7, 50)) < 0.6
    expected = []
    for col in seq.T:
        events = sum(1 for a, b in zip(col[:-1], col[1:]) if a and not b)
        expected.append(events if col.any() else len(col))
    assert forgetting_counts(torch.from_numpy(seq)).tolist() == expected


def test_forgetting_scores_count_events_of_each_presentation(digits, tmp_path):
    data = digits.subset(torch.arange(200))
    epochs, bs, lr = 4, 32, 0.05
    got = compute_scores(data, "forgetting", arch="mlp", epochs=epochs, seeds=1, seed=3, pool=0, model_kw={},
                         batch_size=bs, lr=lr, cache_dir=tmp_path, progress=False)
    model = seeded_model(data, 3)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(3)
    x, y = data.x_train, data.y_train
    history = {i: [] for i in range(len(x))}
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), bs):
            idx = perm[start:start + bs]
            out = model(x[idx])
            for i, ok in zip(idx.tolist(), (out.argmax(1) == y[idx]).tolist()):
                history[i].append(ok)
            loss = F.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    expected = [sum(a and not b for a, b in zip(h[:-1], h[1:])) if any(h) else len(h) for h in history.values()]
    assert got.values.tolist() == expected
    assert got.higher_is_harder and got.kind == "forgetting"


# ----------------------------------------------------------------------------- EL2N, EL2N-SL
def test_el2n_equals_a_direct_computation(digits, tmp_path):
    got = compute_scores(digits, "el2n", arch="mlp", epochs=0, seeds=2, seed=5, pool=0, model_kw={},
                         cache_dir=tmp_path, progress=False)
    x, y = digits.x_train, digits.y_train.numpy()
    per_seed = []
    for s in (5, 6):
        with torch.no_grad():
            p = np_softmax(seeded_model(digits, s)(x).double().numpy())
        onehot = np.eye(10)[y]
        per_seed.append(np.sqrt(((p - onehot) ** 2).sum(1)))
    np.testing.assert_allclose(got.values.numpy(), np.mean(per_seed, 0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.per_seed.numpy(), np.stack(per_seed), rtol=1e-10, atol=1e-12)


def test_el2n_sl_against_a_teacher_equals_a_direct_computation(digits, tmp_path):
    teacher, t = seeded_model(digits, 99), 4.0
    got = compute_scores(digits, "el2n_sl", arch="mlp", epochs=0, seeds=1, seed=1, pool=0, model_kw={},
                         temperature=t, teacher=teacher, cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        q = np_softmax(teacher(digits.x_train).double().numpy() / t)
        p = np_softmax(seeded_model(digits, 1)(digits.x_train).double().numpy() / t)
    np.testing.assert_allclose(got.values.numpy(), np.linalg.norm(p - q, axis=1) / t, rtol=1e-5, atol=1e-9)
    # the same targets given as soft labels (logits) give the same scores
    with torch.no_grad():
        logits = teacher(digits.x_train)
    same = compute_scores(digits, "el2n_sl", arch="mlp", epochs=0, seeds=1, seed=1, pool=0, model_kw={},
                          temperature=t, soft_labels=logits, cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(same.values.numpy(), got.values.numpy(), rtol=1e-5, atol=1e-9)


# ----------------------------------------------------------------------------- GraNd
@pytest.mark.parametrize("last_layer", [False, True])
def test_grand_equals_a_per_example_autograd_loop(digits, last_layer):
    model = seeded_model(digits, 0, arch="convnet3", width=8)
    x, y = digits.x_train[:24], digits.y_train[:24]
    got = grand_values(model, x, y, last_layer=last_layer, batch_size=10)
    params = list(model.classifier.parameters()) if last_layer else list(model.parameters())
    expected = []
    for i in range(len(x)):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
        expected.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)


def test_grand_scores_average_over_seeds(digits, tmp_path):
    data = digits.subset(torch.arange(40))
    got = compute_scores(data, "grand", arch="mlp", epochs=0, seeds=2, pool=0, model_kw={}, cache_dir=tmp_path,
                         progress=False)
    each = [grand_values(seeded_model(data, s), data.x_train, data.y_train) for s in (0, 1)]
    np.testing.assert_allclose(got.values.numpy(), torch.stack(each).mean(0).numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- c-score and logits
@pytest.fixture(scope="module")
def mislabeled(digits):
    """Digits 0 and 1 (two classes, 60 images each) with one 0 labeled as 1."""
    keep = torch.cat([torch.nonzero(digits.y_train == c).view(-1)[:60] for c in (0, 1)])
    y = digits.y_train[keep].clone()
    y[7] = 1  # a zero, labeled one
    test = torch.nonzero(digits.y_test <= 1).view(-1)
    data = Dataset("toy01", digits.x_train[keep], y, digits.x_test[test], digits.y_test[test], ["0", "1"],
                   digits.mean, digits.std, "test")
    return data, 7


def test_cscore_puts_the_mislabeled_example_lowest(mislabeled, tmp_path):
    data, bad = mislabeled
    got = compute_scores(data, "cscore", arch="mlp", epochs=10, seeds=6, fraction=0.5, pool=0, model_kw={},
                         batch_size=16, lr=0.05, cache_dir=tmp_path, progress=False)
    assert not got.higher_is_harder
    assert got.values[bad] == 0.0
    others = torch.cat([got.values[:bad], got.values[bad + 1:]])
    assert float(others.min()) > float(got.values[bad])
    # the hardest-first ranking of class 1 starts with it
    assert int(class_ranking(got, "hard")[1][0]) == bad
    # NaN exactly where a model trained on the example
    masks = holdout_masks(len(data.x_train), 6, 0.5, 0)
    assert torch.equal(~torch.isnan(got.per_seed), masks)


def test_logits_put_the_mislabeled_example_lowest(mislabeled, tmp_path):
    data, bad = mislabeled
    got = compute_scores(data, "logits", arch="mlp", epochs=5, seeds=1, pool=0, model_kw={}, batch_size=16,
                         lr=0.05, cache_dir=tmp_path, progress=False)
    assert int(torch.argmin(got.values)) == bad and not got.higher_is_harder


def test_holdout_masks_hold_every_example_out_evenly():
    masks = holdout_masks(101, 7, 0.7, 3)
    assert (masks.sum(1) == 101 - round(0.7 * 101)).all()
    counts = masks.sum(0)
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match="every example held out"):
        holdout_masks(100, 2, 0.7, 0)


# ----------------------------------------------------------------------------- ranking
def test_class_ranking_orders_each_class_and_keeps_ties_in_index_order(digits):
    values = torch.zeros(len(digits.x_train), dtype=torch.float64)
    idx0 = torch.nonzero(digits.y_train == 0).view(-1)
    values[idx0[:5]] = torch.tensor([3.0, 1.0, 3.0, 2.0, 0.0], dtype=torch.float64)
    for kind, hard_sign in (("forgetting", 1), ("cscore", -1)):
        s = Scores.from_values(digits, kind, hard_sign * values)
        hard, easy = class_ranking(s, "hard")[0], class_ranking(s, "easy")[0]
        assert hard[:4].tolist() == [int(idx0[0]), int(idx0[2]), int(idx0[3]), int(idx0[1])]
        # ties (score 0: idx0[4] and the rest) keep ascending index order in both orders
        assert hard[4:].tolist() == sorted(hard[4:].tolist())
        assert easy[:-4].tolist() == sorted(easy[:-4].tolist())
        assert easy[-4:].tolist() == [int(idx0[1]), int(idx0[3]), int(idx0[0]), int(idx0[2])]
        assert sorted(hard.tolist()) == idx0.tolist()


# ----------------------------------------------------------------------------- cache and bad input
def test_cache_is_reused_and_a_corrupted_file_is_recomputed(digits, tmp_path, monkeypatch):
    kw = dict(arch="mlp", epochs=1, seeds=1, pool=5, model_kw={}, cache_dir=tmp_path, progress=False)
    first = compute_scores(digits, "el2n", **kw)
    assert first.indices.shape == (50,) and torch.equal(first.labels, digits.y_train[first.indices])
    [path] = tmp_path.iterdir()
    import ddnb.score_kinds as sk

    def no_training(*a, **k):
        raise AssertionError("trained although the scores are cached")

    with monkeypatch.context() as m:
        m.setattr(sk, "fit", no_training)
        again = compute_scores(digits, "el2n", **kw)
    assert torch.equal(again.values, first.values) and again.key == first.key
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="recomputing"):
        redone = compute_scores(digits, "el2n", **kw)
    assert torch.equal(redone.values, first.values)
    assert compute_scores(digits, "el2n", **{**kw, "seeds": 2}).key != first.key


def test_bad_input_is_one_clear_error(digits, tmp_path):
    kw = dict(cache_dir=tmp_path, progress=False, budget="smoke")
    with pytest.raises(ValueError, match=r"kind must be one of 'forgetting'.*got 'difficulty'"):
        compute_scores(digits, "difficulty", **kw)
    with pytest.raises(ValueError, match=r"epochs must be an int >= 1, got 0"):
        compute_scores(digits, "forgetting", epochs=0, **kw)
    with pytest.raises(ValueError, match=r"fraction must be .*got 1"):
        compute_scores(digits, "cscore", fraction=1, **kw)
    with pytest.raises(ValueError, match=r"pool .* must be an int >= 0 and <= \d+, got 100000"):
        compute_scores(digits, "el2n", pool=100000, **kw)
    with pytest.raises(ValueError, match="needs exactly one of teacher"):
        compute_scores(digits, "el2n_sl", **kw)
    with pytest.raises(ValueError, match="for kind 'el2n_sl' only"):
        compute_scores(digits, "el2n", soft_labels=torch.rand(len(digits.x_train), 10), **kw)
    with pytest.raises(ValueError, match=r"soft_labels must be a float tensor of shape \(1198, 10\)"):
        compute_scores(digits, "el2n_sl", soft_labels=torch.rand(5, 10), **kw)
    with pytest.raises(ValueError, match="values must be 1198 finite numbers"):
        Scores.from_values(digits, "el2n", np.zeros(10))
    s = Scores.from_values(digits, "el2n", np.zeros(len(digits.x_train)))
    other = digits.subset(torch.arange(100))
    with pytest.raises(ValueError, match=r"computed for 'digits' with 1198 training images, not for 'digits' with 100"):
        s.check_dataset(other)


# ----------------------------------------------------------------------------- figures
def test_score_figures_show_the_class_extremes_with_their_scores(digits):
    import matplotlib.pyplot as plt

    from ddnb.viz import score_distribution, score_extremes

    values = np.random.default_rng(4).normal(size=len(digits.x_train))
    s = Scores.from_values(digits, "el2n", values)
    fig = score_distribution(s, dataset=digits)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == digits.classes
    assert "higher is harder" in fig.axes[0].get_ylabel()
    plt.close(fig)
    fig = score_extremes(s, digits, 3, n=4)
    titles = np.array([float(ax.get_title()) for ax in fig.axes]).reshape(3, 4)
    class3 = np.sort(values[digits.y_train.numpy() == 3])
    np.testing.assert_allclose(titles[0], class3[:4], rtol=5e-3)  # easiest, easiest first
    np.testing.assert_allclose(titles[2], class3[::-1][:4], rtol=5e-3)  # hardest, hardest first
    mid = (len(class3) - 4) // 2
    np.testing.assert_allclose(titles[1], class3[mid:mid + 4], rtol=5e-3)
    plt.close(fig)
    with pytest.raises(ValueError, match=r"cls must be an int >= 0 and <= 9, got 10"):
        score_extremes(s, digits, 10)
