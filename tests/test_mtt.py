"""MTT / DATM: the functional student against an nn.Module trained with torch.optim.SGD, the
lr gradient against finite differences, start-epoch bounds by hand, and short runs on digits
with tiny cached experts (loss goes down, soft labels learn, factor 2)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ddnb.data import load_dataset
from ddnb.experts import flatten_params, load_params, train_experts
from ddnb.methods import distill, list_methods
from ddnb.methods.base import real_subset
from ddnb.methods.mtt import (correct_real_init, soft_cross_entropy, start_epoch_bounds, student_batches,
                              student_unroll, unflatten_params)
from ddnb.models import get_model

# tiny experts: 1 MLP expert, 2 epochs (lr 0.1, batch 64: ~87% train accuracy), no DSA; trained
# once per test module in a temp cache
EXPERT = dict(arch="mlp", n=1, epochs=2, lr=0.1, batch_size=64, dsa=False)
TINY = dict(arch="mlp", expert_train_epochs=2, expert_lr=0.1, expert_batch=64, expert_dsa=False,
            expert_epochs=1, max_start_epoch=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("experts")
    train_experts(digits, cache_dir=folder, progress=False, **EXPERT)
    return str(folder)


def _tiny_batches(n_steps: int, soft: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_steps):
        x = torch.randn(5, 1, 8, 8, generator=g)
        y = torch.randn(5, 3, generator=g) if soft else torch.randint(0, 3, (5,), generator=g)
        out.append((x, y))
    return out


@pytest.mark.parametrize("soft", [False, True])
def test_unroll_equals_module_trained_with_sgd(soft: bool) -> None:
    torch.manual_seed(0)
    model = get_model("convnet", 1, 3, 8, depth=1, width=4)
    reference = copy.deepcopy(model)
    loss_fn = soft_cross_entropy if soft else F.cross_entropy
    batches = _tiny_batches(4, soft)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    for x, y in batches:
        opt.zero_grad()
        loss_fn(reference(x), y).backward()
        opt.step()
    end = student_unroll(model, flatten_params(model), batches, torch.tensor(0.05), loss_fn, create_graph=False)
    torch.testing.assert_close(end.detach(), flatten_params(reference), rtol=1e-5, atol=1e-6)


def test_unroll_lr_gradient_matches_finite_difference() -> None:
    torch.manual_seed(1)
    model = get_model("mlp", 1, 3, 8, hidden=6).double()
    start = flatten_params(model).double()
    target = start + 0.1 * torch.randn_like(start)
    batches = [(x.double(), y) for x, y in _tiny_batches(3)]

    def loss_at(lr: torch.Tensor) -> torch.Tensor:
        end = student_unroll(model, start, batches, lr)
        return ((end - target) ** 2).sum()

    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_at(lr), lr)
    eps = 1e-6
    fd = (loss_at(torch.tensor(0.1 + eps, dtype=torch.float64)) -
          loss_at(torch.tensor(0.1 - eps, dtype=torch.float64))) / (2 * eps)
    assert grad.item() == pytest.approx(fd.item(), rel=1e-5)


def test_unflatten_params_round_trip_and_bad_size() -> None:
    model = get_model("mlp", 1, 3, 8, hidden=4)
    flat = flatten_params(model)
    views = unflatten_params(model, flat)
    for name, p in model.named_parameters():
        torch.testing.assert_close(views[name], p.detach())
    with pytest.raises(ValueError, match="parameters"):
        unflatten_params(model, flat[:-1])


def test_student_batches_cover_the_set_each_pass() -> None:
    x, y = torch.arange(10.0).reshape(10, 1, 1, 1), torch.arange(10)
    torch.manual_seed(0)
    seen = [yb.tolist() for _, yb in student_batches(x, y, steps=4, batch_size=5, strategy=None)]
    assert sorted(seen[0] + seen[1]) == list(range(10)) and sorted(seen[2] + seen[3]) == list(range(10))
    assert [len(s) for s in seen] == [5, 5, 5, 5]


def test_start_epoch_bounds_mtt_and_datm() -> None:
    assert start_epoch_bounds({"max_start_epoch": 20}, 7) == (0, 20)
    s = dict(min_start_epoch=2, current_max_start_epoch=10, max_start_epoch=20, expansion_end_epoch=1000)
    assert start_epoch_bounds(s, 0) == (2, 10)
    assert start_epoch_bounds(s, 500) == (2, 15)  # 10 + int(10 * 500 / 1000)
    assert start_epoch_bounds(s, 5000) == (2, 20)  # capped at max_start_epoch


def test_registered_with_budgets() -> None:
    methods = {m["name"]: m for m in list_methods()}
    for name in ("mtt", "datm"):
        assert methods[name]["kind"] == "distill" and methods[name]["budgets"] == ["cpu", "paper", "smoke"]


def test_mtt_loss_decreases_on_digits(digits, cache) -> None:
    # one expert, start epoch always 0, no augmentation, full batch: the loss is a deterministic
    # function of (images, syn_lr), so a few image steps must lower it
    syn, hist = distill("mtt", digits, 1, budget="smoke", seed=0, device="cpu", progress=False,
                        expert_cache_dir=cache, dsa_strategy="", iterations=5, syn_steps=4, **TINY)
    assert hist.loss[-1] < hist.loss[0]
    assert not syn.is_soft and syn.provenance["syn_lr"] > 0


@pytest.mark.parametrize("method", ["mtt", "datm"])
def test_evaluation_uses_the_learned_syn_lr(digits, cache, monkeypatch, method: str) -> None:
    import ddnb.train
    from ddnb.train import evaluate_synset

    # syn_lr starts at lr_teacher = 0.03 (not the protocol's 0.01) and learns from there
    syn, _ = distill(method, digits, 1, budget="smoke", seed=0, device="cpu", progress=False,
                     expert_cache_dir=cache, iterations=2, syn_steps=2, lr_teacher=0.03, lr_lr=1e-3, **TINY,
                     **({"current_max_start_epoch": 1} if method == "datm" else {}))
    syn_lr = syn.provenance["syn_lr"]
    assert syn_lr != 0.03 and abs(syn_lr - 0.03) < 0.02
    seen = []
    monkeypatch.setattr(ddnb.train, "train_model", lambda model, x, y, **kw: seen.append(kw) or {})
    res = evaluate_synset(syn, digits, seeds=1, progress=False)
    assert seen[0]["lr"] == syn_lr and res.protocol["lr"] == syn_lr and res.protocol["source"] == "set"
    assert seen[0]["epochs"] == 1000 and seen[0]["dsa"]  # DC's protocol with DSA, as the reference evaluates
    evaluate_synset(syn, digits, seeds=1, progress=False, lr=0.01)  # unless told otherwise
    assert seen[1]["lr"] == 0.01


def test_datm_soft_labels_learn(digits, cache) -> None:
    grads = []
    syn, hist = distill("datm", digits, 1, budget="smoke", seed=0, device="cpu", progress=False,
                        expert_cache_dir=cache, iterations=2, syn_steps=3, current_max_start_epoch=1,
                        callback=lambda it, state: grads.append(state["labels"].grad.abs().sum().item()), **TINY)
    assert all(g > 0 for g in grads)
    assert syn.is_soft and syn.label_kind == "soft_logits" and syn.labels.shape == (10, 10)
    assert syn.hard_labels.tolist() == list(range(10))


def test_datm_init_uses_correctly_classified_images(digits, cache) -> None:
    traj = train_experts(digits, cache_dir=cache, progress=False, **EXPERT)[0]
    model = get_model("mlp", 1, 10, 8)
    idx = correct_real_init(digits, model, traj[-1], 3, seed=0)
    assert len(idx) == 30
    load_params(model, traj[-1]).eval()
    with torch.no_grad():
        pred = model(digits.x_train[idx]).argmax(1)
    assert pred.tolist() == digits.y_train[idx].tolist()
    with pytest.raises(ValueError, match="classifies only"):
        correct_real_init(digits, model, traj[0] * 0, 3, seed=0)  # an all-zero net predicts class 0 only


@pytest.mark.parametrize("method", ["mtt", "datm"])
def test_factor_2(digits, cache, method: str) -> None:
    syn, hist = distill(method, digits, 1, budget="smoke", seed=0, device="cpu", progress=False,
                        expert_cache_dir=cache, iterations=1, syn_steps=2, factor=2, **TINY,
                        **({"current_max_start_epoch": 1} if method == "datm" else {}))
    assert syn.factor == 2 and syn.images.shape == (10, 1, 8, 8)
    images, labels = syn.decoded()
    assert images.shape == (40, 1, 8, 8) and labels.shape[0] == 40


def test_real_subset_is_class_balanced(digits) -> None:
    assert real_subset(digits, None, 0) is digits
    sub = real_subset(digits, 5, seed=0)
    assert sub.name == digits.name and torch.bincount(sub.y_train).tolist() == [5] * 10
    assert torch.equal(sub.x_test, digits.x_test)


def test_bad_settings_fail_before_training(digits, tmp_path) -> None:
    with pytest.raises(ValueError, match="max_start_epoch"):
        distill("mtt", digits, 1, budget="smoke", expert_cache_dir=str(tmp_path), expert_train_epochs=2,
                max_start_epoch=2, expert_epochs=1)
    with pytest.raises(ValueError, match="expert_subset"):
        distill("datm", digits, 1, budget="smoke", expert_cache_dir=str(tmp_path), expert_subset=0)
    with pytest.raises(ValueError, match="current_max_start_epoch"):
        distill("datm", digits, 1, budget="smoke", expert_cache_dir=str(tmp_path), current_max_start_epoch=0)
    assert not any(tmp_path.iterdir())


def test_datm_resume_is_exact(digits, cache, tmp_path) -> None:
    kw = dict(budget="smoke", seed=1, device="cpu", progress=False, expert_cache_dir=cache, iterations=3,
              syn_steps=2, current_max_start_epoch=1, **TINY)
    straight, _ = distill("datm", digits, 1, **kw)
    distill("datm", digits, 1, out_dir=tmp_path, checkpoint_every=1, **kw)
    (tmp_path / "ckpt_00000003.pt").unlink()  # the resumed run must redo iteration 3 exactly
    resumed, hist = distill("datm", digits, 1, out_dir=tmp_path, resume=True, **kw)
    assert hist.iterations == 3
    torch.testing.assert_close(resumed.images, straight.images)
    torch.testing.assert_close(resumed.labels, straight.labels)
    assert resumed.provenance["syn_lr"] == straight.provenance["syn_lr"]
