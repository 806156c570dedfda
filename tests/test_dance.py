"""DANCE: mid encoders (Eq. 3), calibration loss (Eq. 5), pixel-unit steps, smoke run, resume, ablations."""
from __future__ import annotations

import pytest
import torch

import ddnb
from ddnb.experts import flatten_params, load_params
from ddnb.methods import dance as D
from ddnb.methods.base import init_synthetic
from ddnb.models import get_model


@pytest.fixture(scope="module")
def digits():
    return ddnb.load_dataset("digits")


@pytest.fixture(scope="module", autouse=True)
def expert_cache(tmp_path_factory):
    """Experts go to a temporary cache shared by this module's runs (trained once, then loaded)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDNB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _two_nets(data):
    c, h, _ = data.image_shape
    torch.manual_seed(0)
    a = get_model("convnet3", c, data.num_classes, h)
    b = get_model("convnet3", c, data.num_classes, h)
    return a, b


def test_mid_encoder_endpoints_are_expert_and_init(digits):
    init_net, expert_net = _two_nets(digits)
    init, expert = flatten_params(init_net), flatten_params(expert_net)
    net = _two_nets(digits)[0]
    for lam, want in ((0.0, expert_net), (1.0, init_net)):
        load_params(net, D.mid_params(init, expert, lam))
        assert all(torch.equal(p, q) for p, q in zip(net.parameters(), want.parameters()))
    half = D.mid_params(init, expert, 0.25)
    assert torch.allclose(half, init + 0.75 * (expert - init), atol=1e-6)
    with pytest.raises(ValueError, match=r"lambda must be in \[0, 1\], got 1.5"):
        D.mid_params(init, expert, 1.5)


def test_calibration_term_is_cross_entropy_by_hand():
    torch.manual_seed(0)
    k, n = 3, 4
    logits = torch.randn(k * n, k)
    by_hand = 0.0
    for c in range(k):
        rows = logits[c * n:(c + 1) * n]
        log_p = rows[:, c] - torch.log(torch.exp(rows).sum(1))  # log softmax of the true class
        by_hand += float(-log_p.mean())
    assert abs(float(D.calibration_term(logits, k)) - by_hand) < 1e-5
    with pytest.raises(ValueError, match="cannot be split into 5 equal classes"):
        D.calibration_term(logits, 5)


def test_pixel_bounds_are_0_and_1(digits):
    low, high = D.pixel_bounds(digits, torch.device("cpu"))
    assert torch.allclose(low * torch.tensor(digits.std) + torch.tensor(digits.mean), torch.zeros(1), atol=1e-6)
    assert torch.allclose(high * torch.tensor(digits.std) + torch.tensor(digits.mean), torch.ones(1), atol=1e-6)


def test_sample_syn_caps_each_class(digits):
    images, labels = init_synthetic(digits, 3, seed=0, factor=2)
    g = torch.Generator().manual_seed(0)
    full = D.sample_syn(images, 3, 10, 2, 8, 200, g)
    capped = D.sample_syn(images, 3, 10, 2, 8, 5, g)
    assert [len(s) for s in full] == [12] * 10 and [len(s) for s in capped] == [5] * 10
    for a, b in zip(full, capped):  # every kept image is one of the class's decoded images
        assert all(any(torch.equal(x, y) for y in a) for x in b)


def test_smoke_run_checkpoints_and_resumes_exactly(digits, tmp_path):
    kw = dict(budget="smoke", seed=1, progress=False, iterations=4, batch_real=8)
    full, hist_full = ddnb.distill("dance", digits, 1, **kw)
    assert full.factor == 2 and full.images.shape == (10, 1, 8, 8) and torch.isfinite(full.images).all()
    assert full.provenance["method"] == "dance" and len(hist_full.loss) == 4
    start, _ = init_synthetic(digits, 1, seed=1, factor=2)
    assert not torch.equal(full.images, start)
    ddnb.distill("dance", digits, 1, out_dir=tmp_path, checkpoint_every=2, **kw)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_00000002.pt", "ckpt_00000004.pt"]
    (tmp_path / "ckpt_00000004.pt").unlink()  # 'crash' after iteration 2
    resumed, hist = ddnb.distill("dance", digits, 1, out_dir=tmp_path, resume=True, **kw)
    assert torch.equal(full.images, resumed.images) and hist.loss == hist_full.loss


def test_ablations_run_and_differ(digits):
    kw = dict(budget="smoke", seed=0, progress=False, iterations=2, batch_real=8)
    full, _ = ddnb.distill("dance", digits, 1, **kw)
    no_pltda, _ = ddnb.distill("dance", digits, 1, pltda=False, **kw)
    no_calib, _ = ddnb.distill("dance", digits, 1, iter_calib=0, **kw)
    no_factor, _ = ddnb.distill("dance", digits, 1, factor=1, **kw)
    assert no_factor.factor == 1 and no_factor.decoded()[0].shape == (10, 1, 8, 8)
    assert not torch.equal(full.images, no_pltda.images) and not torch.equal(full.images, no_calib.images)


def test_calibration_pulls_synthetic_images_into_the_expert_classes(digits):
    """Only calibration (no matching step): the expert's cross-entropy on the set goes down."""
    settings = dict(D.BUDGETS["smoke"])
    inits, finals = D.load_experts(digits, settings, "cpu", progress=False)
    c, h, _ = digits.image_shape
    expert = load_params(get_model("convnet3", c, 10, h), finals[0])
    start, labels = init_synthetic(digits, 2, seed=0, factor=1)
    kw = dict(budget="smoke", seed=0, progress=False, iterations=5, factor=1, n_experts=1, lr_img_per_ipc=0.5,
              batch_real=8)
    matched, _ = ddnb.distill("dance", digits, 2, iter_calib=0, **kw)
    calibrated, _ = ddnb.distill("dance", digits, 2, iter_calib=3, **kw)

    def ce(x):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(expert(x), labels))

    assert ce(calibrated.images) < ce(matched.images)


def test_bad_settings_name_value_and_range(digits):
    with pytest.raises(ValueError, match="dance setting calib_interval=0 is not allowed; allowed: an int >= 1"):
        ddnb.distill("dance", digits, 1, budget="smoke", calib_interval=0)
    with pytest.raises(ValueError, match="dance setting pltda='yes' is not allowed; allowed: true or false"):
        ddnb.distill("dance", digits, 1, budget="smoke", pltda="yes")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'lr_img'"):
        ddnb.distill("dance", digits, 1, budget="smoke", lr_img=0.1)


def test_registered_with_official_paper_budget():
    info = next(m for m in ddnb.list_methods() if m["name"] == "dance")
    assert info["kind"] == "distill" and info["budgets"] == ["cpu", "paper", "smoke"]
    p = D.BUDGETS["paper"]
    got = (p["iterations"], p["n_experts"], p["expert_epochs"], p["batch_real"], p["factor"], p["expert_lr"],
           p["expert_momentum"], p["expert_weight_decay"], p["lr_img_per_ipc"], p["momentum"], p["iter_calib"])
    assert got == (10_000, 5, 60, 128, 2, 0.01, 0.9, 5e-4, 0.01, 0.5, 1)
    # the official pre-training (pretrain.py): batch 64, lr x0.2 at 2/3 and 5/6, CutMix 0.5, IDC augmentation
    assert (p["expert_batch"], p["expert_schedule"], p["expert_cutmix_prob"]) == (64, "multistep", 0.5)
    assert p["expert_dsa"] == "idc:color_crop" and p["dsa_strategy"] == "idc:color_crop_cutout"
    assert (p["eval_protocol"], p["eval_epochs"]) == ("idc", 1500)  # 001 §4.1
    kwargs = D.expert_kwargs(p)
    assert (kwargs["schedule"], kwargs["cutmix_prob"], kwargs["batch_size"]) == ("multistep", 0.5, 64)


def test_set_carries_the_idc_protocol(digits):
    syn, _ = ddnb.distill("dance", digits, 1, budget="smoke", seed=0, progress=False, iterations=1)
    assert syn.eval_protocol == {"name": "idc", "epochs": 4}
