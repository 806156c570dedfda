"""train.py: losses against hand computation, schedules against formulas and torch's schedulers,
the first-epoch loss of each regime, determinism, NaN handling, and a real run on digits."""
from __future__ import annotations

import copy
import json
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from ddnb.data import load_dataset
from ddnb.synset import SyntheticSet
from ddnb.schedules import lr_schedule
from ddnb.train import (PROTOCOLS, EvalResult, evaluate, evaluate_synset, kd_loss, kl_loss, resolve_protocol, soften,
                        train_model)


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """Batch-mean KL(p || q) by the textbook sum."""
    return float(np.mean([sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr) if pi > 0) for pr, qr in zip(p, q)]))


def _tiny_model(seed: int = 0, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, k))


def _tiny_data(n: int = 6, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % k


# --------------------------------------------------------------------------- losses
def test_kl_loss_with_temperature_matches_hand_computation():
    s = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    p = np.array([[0.2, 0.3, 0.5], [0.7, 0.1, 0.2]])
    t = 2.0
    p_t = np.sqrt(p) / np.sqrt(p).sum(1, keepdims=True)  # softmax(log p / 2) = sqrt(p) normalized
    expected = t * t * _np_kl(p_t, _np_softmax(s / t))
    got = kl_loss(torch.tensor(s), soften(torch.tensor(p), t, "soft_probs"), t)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_soft_logit_targets_and_kd_loss_match_hand_computation():
    s, z, t = np.array([[0.0, 1.0, -2.0]]), np.array([[3.0, 0.0, 1.0]]), 4.0
    expected = t * t * _np_kl(_np_softmax(z / t), _np_softmax(s / t))
    assert float(kl_loss(torch.tensor(s), soften(torch.tensor(z), t, "soft_logits"), t)) == pytest.approx(expected)
    assert float(kd_loss(torch.tensor(s), torch.tensor(z), t)) == pytest.approx(expected)
    assert float(kd_loss(torch.tensor(s), torch.tensor(s), t)) == pytest.approx(0.0, abs=1e-12)


def test_probabilities_with_zeros_are_fine_at_temperature_one():
    p = torch.tensor([[1.0, 0.0, 0.0]])
    s = torch.tensor([[2.0, 1.0, 0.0]])
    expected = -math.log(_np_softmax(np.array([[2.0, 1.0, 0.0]]))[0, 0])  # KL to one-hot = CE
    assert float(kl_loss(s, soften(p, 1.0, "soft_probs"), 1.0)) == pytest.approx(expected)


# --------------------------------------------------------------------------- schedules
def test_step_schedule_drops_tenfold_at_half_way():
    lrs = lr_schedule("step", 0.01, 300)
    assert lrs[:150] == [0.01] * 150 and lrs[150:] == pytest.approx([0.001] * 150)


def test_cosine_with_warmup_matches_formula():
    assert lr_schedule("cosine", 0.1, 4) == pytest.approx([0.1, 0.1 * (2 + 2**0.5) / 4, 0.05, 0.1 * (2 - 2**0.5) / 4])
    lrs = lr_schedule("cosine", 1e-3, 25, warmup_epochs=5)
    assert lrs[:5] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])
    assert lrs[5:] == pytest.approx([1e-3 * (1 + math.cos(math.pi * i / 20)) / 2 for i in range(20)])


def test_multistep_schedule_at_chosen_epochs_by_hand():
    # IDC / DANCE: x0.2 at 2E//3 and 5E//6 (torch MultiStepLR stepped per epoch); E = 1000 -> 666 and 833
    lrs = lr_schedule("multistep", 0.01, 1000)
    for epoch, lr in ((0, 0.01), (665, 0.01), (666, 0.002), (832, 0.002), (833, 0.0004), (999, 0.0004)):
        assert lrs[epoch] == pytest.approx(lr), epoch
    # E = 6: 2/3 * 6 is 3.999... in floating point; the drop still comes at 2*6//3 = 4 and 5*6//6 = 5
    assert lr_schedule("multistep", 1.0, 6) == pytest.approx([1, 1, 1, 1, 0.2, 0.04])
    assert lr_schedule("multistep", 1.0, 1500) == pytest.approx([1] * 1000 + [0.2] * 250 + [0.04] * 250)
    assert lr_schedule("multistep", 1.0, 4, milestones=(0.5,), gamma=0.1) == pytest.approx([1, 1, 0.1, 0.1])


def test_multistep_schedule_matches_torch_multisteplr():
    epochs = 30
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2 * epochs // 3, 5 * epochs // 6], gamma=0.2)
    torch_lrs = []
    for _ in range(epochs):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lr_schedule("multistep", 0.01, epochs) == pytest.approx(torch_lrs)


@pytest.mark.parametrize("args, match", [
    (("linear", 0.1, 10), "schedule must be one of"),
    (("multistep", 0.1, 10, 0, (0.5, 1.5)), "milestones must be fractions"),
    (("multistep", 0.1, 10, 0, (0.5,), 0.0), "gamma must be > 0"),
    (("step", 0.1, 0), "epochs must be"),
    (("cosine", 0.1, 10, 10), "warmup_epochs"),
])
def test_schedule_errors(args, match):
    with pytest.raises(ValueError, match=match):
        lr_schedule(*args)


# --------------------------------------------------------------------------- regimes
def test_hl_first_epoch_loss_is_cross_entropy_at_init():
    x, y = _tiny_data()
    model = _tiny_model()
    logits = model(x).detach().numpy()
    expected = float(np.mean(-np.log(_np_softmax(logits)[np.arange(6), y.numpy()])))
    hist = train_model(model, x, y, epochs=1, batch_size=6)
    assert hist["train_loss"][0] == pytest.approx(expected, rel=1e-5)


def test_sl_first_epoch_loss_is_scaled_kl_at_init():
    x, _ = _tiny_data()
    probs = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(9)), 1)
    model = _tiny_model()
    t = 3.0
    logits = model(x).detach().numpy()
    p_t = _np_softmax(np.log(probs.numpy().astype(np.float64)) / t)
    expected = t * t * _np_kl(p_t, _np_softmax(logits / t))
    hist = train_model(model, x, probs, epochs=1, batch_size=6, regime="sl", temperature=t, optimizer="adamw")
    assert hist["train_loss"][0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("aug", [dict(), dict(dsa=True), dict(dsa=True, cutmix_alpha=1.0)])
def test_sl_kd_with_teacher_equal_to_student_init_has_zero_loss(aug):
    """The teacher sees the very same augmented batch, so an identical teacher gives KL = 0."""
    x, y = _tiny_data()
    student = _tiny_model()
    teacher = copy.deepcopy(student)
    hist = train_model(student, x, y, epochs=1, batch_size=6, regime="sl+kd", teacher=teacher,
                       temperature=20.0, **aug)
    assert hist["train_loss"][0] == pytest.approx(0.0, abs=1e-6)
    assert teacher.training  # the teacher's mode is restored


def test_sl_kd_first_epoch_loss_matches_manual_teacher_kl():
    x, y = _tiny_data()
    student, teacher = _tiny_model(0), _tiny_model(1)
    t = 20.0
    s = student(x).detach().numpy().astype(np.float64)
    z = teacher(x).detach().numpy().astype(np.float64)
    expected = t * t * _np_kl(_np_softmax(z / t), _np_softmax(s / t))
    hist = train_model(student, x, y, epochs=1, batch_size=6, regime="sl+kd", teacher=teacher, temperature=t)
    assert hist["train_loss"][0] == pytest.approx(expected, rel=1e-4)
    assert all(p.grad is None for p in teacher.parameters())  # teacher never gets gradients


def test_regime_label_mismatches_are_errors():
    x, y = _tiny_data()
    with pytest.raises(ValueError, match="regime 'hl' needs hard"):
        train_model(_tiny_model(), x, torch.rand(6, 3), epochs=1)
    with pytest.raises(ValueError, match="regime 'sl' needs soft"):
        train_model(_tiny_model(), x, y, epochs=1, regime="sl")
    with pytest.raises(ValueError, match="needs a teacher"):
        train_model(_tiny_model(), x, y, epochs=1, regime="sl+kd")
    with pytest.raises(ValueError, match="regime must be one of"):
        train_model(_tiny_model(), x, y, epochs=1, regime="ce")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train_model(_tiny_model(), x, y, epochs=1, optimizer="rmsprop")


# --------------------------------------------------------------------------- behaviour
def test_same_seed_same_result_and_seed_matters():
    x, y = _tiny_data(n=20)
    runs = []
    for seed in (3, 3, 4):
        model = _tiny_model()
        hist = train_model(model, x, y, epochs=4, batch_size=8, dsa=True, cutmix_alpha=1.0, cutmix_prob=0.5,
                           seed=seed)
        runs.append((hist["train_loss"], torch.cat([p.flatten() for p in model.parameters()])))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_training_leaves_the_global_rng_alone():
    x, y = _tiny_data()
    model = _tiny_model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_model(model, x, y, epochs=2, dsa=True)
    assert torch.equal(torch.rand(3), expected)


def test_nan_loss_names_the_epoch():
    x, y = _tiny_data()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="epoch 1/3"):
        train_model(_tiny_model(), x, y, epochs=3)


def test_on_epoch_end_sees_every_epoch():
    x, y = _tiny_data()
    seen = []
    train_model(_tiny_model(), x, y, epochs=3, on_epoch_end=lambda e, m: seen.append(e))
    assert seen == [1, 2, 3]


def test_evaluate_counts_correct_predictions_and_restores_mode():
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    x = torch.eye(3).repeat(4, 1)  # predictions 0,1,2,0,1,2,...
    y = torch.tensor([0, 1, 2, 0, 1, 0, 0, 1, 2, 1, 1, 0])  # wrong at 5, 9, 11
    model.train()
    assert evaluate(model, x, y, batch_size=5) == pytest.approx(9 / 12)
    assert model.training


def test_protocols_follow_paper_table_and_dc_reference():
    assert PROTOCOLS["hl"]["optimizer"] == "sgd" and PROTOCOLS["hl"]["lr"] == 0.01
    assert PROTOCOLS["sl"]["optimizer"] == "adamw" and PROTOCOLS["sl"]["temperature"] == 20
    assert PROTOCOLS["sl+kd"]["cutmix_alpha"] == 1.0 and "cutmix_alpha" not in PROTOCOLS["sl"]
    assert resolve_protocol("dc", None, None, {})["epochs"] == 300
    assert resolve_protocol("dc", None, True, {})["epochs"] == 1000
    assert resolve_protocol("hl", None, None, {"lr": 0.1})["lr"] == 0.1
    with pytest.raises(ValueError, match="unknown protocol"):
        resolve_protocol("fast", None, None, {})
    with pytest.raises(ValueError, match="unknown training setting"):
        resolve_protocol("dc", None, None, {"learning_rate": 0.1})


def test_idc_protocol_is_idcs_evaluation():
    p = resolve_protocol("idc", None, None, {})
    assert (p["batch_size"], p["lr"], p["momentum"], p["weight_decay"], p["epochs"]) == (64, 0.01, 0.9, 5e-4, 1000)
    assert p["schedule"] == "multistep" and p["milestones"] == pytest.approx((2 / 3, 5 / 6)) and p["gamma"] == 0.2
    assert p["dsa"] == "idc:color_crop_flip_scale_rotate"  # IDC's DSA strategy minus cutout (CutMix instead)
    assert (p["cutmix_alpha"], p["cutmix_prob"]) == (1.0, 0.5)
    assert resolve_protocol("idc", 1500, None, {})["epochs"] == 1500


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _real_ipc10(data) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([ix[torch.randperm(len(ix), generator=g)[:10]] for ix in data.class_indices()])
    return SyntheticSet.from_real(data, idx, "random", seed=0)


def test_digits_ipc10_real_images_train_well_above_chance(digits):
    result = evaluate_synset(_real_ipc10(digits), digits, seeds=2, epochs=20, progress=False,
                             model_kw={"width": 32}, lr=0.05)
    assert isinstance(result, EvalResult)
    assert result.mean > 50  # chance is 10 %
    assert result.std == pytest.approx(float(np.std(result.per_seed)))  # population std (ddof=0)
    assert result.seeds == [0, 1] and result.protocol["epochs"] == 20 and result.protocol["lr"] == 0.05
    json.dumps(result.to_dict())


def test_test_seconds_count_every_test_pass_and_only_them(digits, monkeypatch):
    import ddnb.train

    real_evaluate, real_train, calls = ddnb.train.evaluate, ddnb.train.train_model, []

    def slow_evaluate(model, x, y):
        calls.append(1)
        time.sleep(0.05)
        return real_evaluate(model, x, y)

    def slow_train(*args, **kw):
        time.sleep(0.3)
        return real_train(*args, **kw)

    monkeypatch.setattr(ddnb.train, "evaluate", slow_evaluate)
    monkeypatch.setattr(ddnb.train, "train_model", slow_train)
    result = evaluate_synset(_real_ipc10(digits), digits, seeds=2, epochs=3, progress=False, curve_epochs=[1],
                             model_kw={"width": 8}, batched=False)
    assert len(calls) == 4  # 2 seeds, tested after epoch 1 and at the end
    assert 4 * 0.05 <= result.test_seconds <= result.seconds - 2 * 0.3  # the training's sleeps are not counted


def _capture_training(monkeypatch) -> list[dict]:
    """Replace train_model (as evaluate_synset calls it) by a recorder of its keywords."""
    import ddnb.train

    seen: list[dict] = []
    monkeypatch.setattr(ddnb.train, "train_model", lambda model, x, y, **kw: seen.append(kw) or {})
    return seen


def test_a_set_carries_its_protocol_and_an_explicit_one_wins(digits, monkeypatch, tmp_path):
    from ddnb.train import protocol_record

    seen = _capture_training(monkeypatch)
    real = _real_ipc10(digits)
    carried = SyntheticSet(real.images, real.labels, real.dataset, 10, real.image_shape,
                           provenance={"eval_protocol": protocol_record("idc", epochs=7, lr=0.03)})
    carried = SyntheticSet.load(carried.save(tmp_path / "set.safetensors"))  # saved and loaded with the set
    assert carried.eval_protocol == {"name": "idc", "epochs": 7, "lr": 0.03}
    res = evaluate_synset(carried, digits, seeds=1, progress=False)
    assert res.protocol["name"] == "idc" and res.protocol["source"] == "set"
    last = seen[-1]
    assert (last["epochs"], last["lr"], last["batch_size"], last["schedule"]) == (7, 0.03, 64, "multistep")
    res = evaluate_synset(carried, digits, seeds=1, progress=False, epochs=3, lr=0.5)  # explicit settings win
    assert res.protocol["source"] == "set" and (seen[-1]["epochs"], seen[-1]["lr"]) == (3, 0.5)
    res = evaluate_synset(carried, digits, seeds=1, progress=False, protocol="dc")  # an explicit protocol wins
    assert res.protocol["name"] == "dc" and res.protocol["source"] == "argument"
    assert (seen[-1]["epochs"], seen[-1]["lr"], seen[-1]["batch_size"]) == (300, 0.01, 256)
    res = evaluate_synset(real, digits, seeds=1, progress=False)  # a set without one: dc
    assert res.protocol["name"] == "dc" and res.protocol["source"] == "default"
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol_record("fast")
    with pytest.raises(ValueError, match="eval_protocol"):
        SyntheticSet(real.images, real.labels, real.dataset, 10, real.image_shape, provenance={"eval_protocol": "idc"})


def test_soft_label_set_under_hl_trains_on_argmax_and_under_sl_on_kl(digits):
    real = _real_ipc10(digits)
    soft = SyntheticSet(real.images, torch.nn.functional.one_hot(real.labels, 10).float() * 0.9 + 0.01,
                        real.dataset, 10, real.image_shape)
    hl = evaluate_synset(soft, digits, seeds=1, epochs=2, progress=False, protocol="hl", dsa=False,
                         model_kw={"width": 8})
    sl = evaluate_synset(soft, digits, seeds=1, epochs=2, progress=False, protocol="sl", model_kw={"width": 8})
    assert hl.protocol["regime"] == "hl" and sl.protocol["regime"] == "sl" and sl.protocol["dsa"] is True
