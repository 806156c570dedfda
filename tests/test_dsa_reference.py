"""dsa(draws="reference") and DM's reference-DSA settings against a transcription of the official DSA
(VICO-UoE/DatasetCondensation utils.py) and main_DM.py's per-class loop.

The transcription below follows `ParamDiffAug`, `set_seed_DiffAug`, `DiffAugment` (aug_mode "S") and the
`rand_*` functions line by line; the only changes are what today's torch needs: affine_grid / grid_sample
get align_corners explicitly (the reference passes none: True under its pinned torch 1.2.0, False since 1.3)
and torch.meshgrid gets indexing="ij" (its old default). It re-seeds the global RNG, as the original does,
inside torch.random.fork_rng.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ddnb
from ddnb.augment import DSA_PIECES, DSA_STRATEGY, dsa
from ddnb.methods import dm as M
from ddnb.methods.base import init_synthetic
from ddnb.models import get_model


class ParamDiffAug:
    def __init__(self, align_corners: bool):
        self.aug_mode = "S"
        self.prob_flip = 0.5
        self.ratio_scale = 1.2
        self.ratio_rotate = 15.0
        self.ratio_crop_pad = 0.125
        self.ratio_cutout = 0.5
        self.brightness = 1.0
        self.saturation = 2.0
        self.contrast = 0.5
        self.align_corners = align_corners


def set_seed_DiffAug(param):
    if param.latestseed == -1:
        return
    torch.random.manual_seed(param.latestseed)
    param.latestseed += 1


def DiffAugment(x, strategy="", seed=-1, param=None):
    if strategy in ("None", "none", ""):
        return x
    param.Siamese = seed != -1
    param.latestseed = seed
    pbties = strategy.split("_")
    set_seed_DiffAug(param)
    p = pbties[torch.randint(0, len(pbties), size=(1,)).item()]
    for f in AUGMENT_FNS[p]:
        x = f(x, param)
    return x.contiguous()


def rand_scale(x, param):
    ratio = param.ratio_scale
    set_seed_DiffAug(param)
    sx = torch.rand(x.shape[0]) * (ratio - 1.0 / ratio) + 1.0 / ratio
    set_seed_DiffAug(param)
    sy = torch.rand(x.shape[0]) * (ratio - 1.0 / ratio) + 1.0 / ratio
    theta = [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(x.shape[0])]
    theta = torch.tensor(theta, dtype=torch.float)
    if param.Siamese:
        theta[:] = theta[0]
    grid = F.affine_grid(theta, x.shape, align_corners=param.align_corners).to(x.device)
    return F.grid_sample(x, grid, align_corners=param.align_corners)


def rand_rotate(x, param):
    ratio = param.ratio_rotate
    set_seed_DiffAug(param)
    theta = (torch.rand(x.shape[0]) - 0.5) * 2 * ratio / 180 * float(np.pi)
    theta = [[[torch.cos(theta[i]), torch.sin(-theta[i]), 0],
              [torch.sin(theta[i]), torch.cos(theta[i]), 0]] for i in range(x.shape[0])]
    theta = torch.tensor(theta, dtype=torch.float)
    if param.Siamese:
        theta[:] = theta[0]
    grid = F.affine_grid(theta, x.shape, align_corners=param.align_corners).to(x.device)
    return F.grid_sample(x, grid, align_corners=param.align_corners)


def rand_flip(x, param):
    set_seed_DiffAug(param)
    randf = torch.rand(x.size(0), 1, 1, 1, device=x.device)
    if param.Siamese:
        randf[:] = randf[0]
    return torch.where(randf < param.prob_flip, x.flip(3), x)


def rand_brightness(x, param):
    set_seed_DiffAug(param)
    randb = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)
    if param.Siamese:
        randb[:] = randb[0]
    return x + (randb - 0.5) * param.brightness


def rand_saturation(x, param):
    x_mean = x.mean(dim=1, keepdim=True)
    set_seed_DiffAug(param)
    rands = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)
    if param.Siamese:
        rands[:] = rands[0]
    return (x - x_mean) * (rands * param.saturation) + x_mean


def rand_contrast(x, param):
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    set_seed_DiffAug(param)
    randc = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)
    if param.Siamese:
        randc[:] = randc[0]
    return (x - x_mean) * (randc + param.contrast) + x_mean


def rand_crop(x, param):
    ratio = param.ratio_crop_pad
    shift_x, shift_y = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    set_seed_DiffAug(param)
    translation_x = torch.randint(-shift_x, shift_x + 1, size=[x.size(0), 1, 1], device=x.device)
    set_seed_DiffAug(param)
    translation_y = torch.randint(-shift_y, shift_y + 1, size=[x.size(0), 1, 1], device=x.device)
    if param.Siamese:
        translation_x[:] = translation_x[0]
        translation_y[:] = translation_y[0]
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long, device=x.device),
        torch.arange(x.size(2), dtype=torch.long, device=x.device),
        torch.arange(x.size(3), dtype=torch.long, device=x.device), indexing="ij")
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def rand_cutout(x, param):
    ratio = param.ratio_cutout
    cutout_size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    set_seed_DiffAug(param)
    offset_x = torch.randint(0, x.size(2) + (1 - cutout_size[0] % 2), size=[x.size(0), 1, 1], device=x.device)
    set_seed_DiffAug(param)
    offset_y = torch.randint(0, x.size(3) + (1 - cutout_size[1] % 2), size=[x.size(0), 1, 1], device=x.device)
    if param.Siamese:
        offset_x[:] = offset_x[0]
        offset_y[:] = offset_y[0]
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long, device=x.device),
        torch.arange(cutout_size[0], dtype=torch.long, device=x.device),
        torch.arange(cutout_size[1], dtype=torch.long, device=x.device), indexing="ij")
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


AUGMENT_FNS = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "crop": [rand_crop],
    "cutout": [rand_cutout],
    "flip": [rand_flip],
    "scale": [rand_scale],
    "rotate": [rand_rotate],
}


def official(x: torch.Tensor, strategy: str, seed: int, align_corners: bool) -> torch.Tensor:
    """The transcription's siamese DiffAugment, the global RNG restored afterwards."""
    with torch.random.fork_rng():
        return DiffAugment(x, strategy, seed=seed, param=ParamDiffAug(align_corners))


def _batch(n: int = 5, c: int = 3, h: int = 12, w: int = 10) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(n * 100 + c))


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("strategy", [*DSA_PIECES, DSA_STRATEGY, "crop_scale"])
def test_reference_draws_bit_identical_to_official(strategy: str, align_corners: bool) -> None:
    x = _batch()
    for seed in [0, 1, 7, 12345, 99999, 2**31 - 2]:
        ours = dsa(x, strategy, seed=seed, draws="reference", align_corners=align_corners)
        assert torch.equal(ours, official(x, strategy, seed, align_corners)), (strategy, seed)


def test_reference_draws_siamese_for_any_batch_size_and_rng_untouched() -> None:
    x = _batch(8, 1, 8, 8)
    state = torch.get_rng_state()
    for seed in range(30):  # a batch of 8 and its first 2 rows get the same transform, as in the reference
        assert torch.equal(dsa(x, DSA_STRATEGY, seed, draws="reference")[:2],
                           dsa(x[:2], DSA_STRATEGY, seed, draws="reference"))
        assert torch.equal(dsa(x[:2], DSA_STRATEGY, seed, draws="reference"), official(x[:2], DSA_STRATEGY, seed, True))
    assert torch.equal(torch.get_rng_state(), state)


def test_reference_draws_differ_from_independent_draws() -> None:
    x = _batch()
    differ = sum(not torch.equal(dsa(x, "crop", s), dsa(x, "crop", s, draws="reference")) for s in range(20))
    assert differ >= 10  # the same seed, other numbers: the two modes are distinct settings


def test_align_corners_matters_only_for_rotating_non_square_images() -> None:
    # a centred linear map sends a pixel's offset from the centre to the same source offset under either
    # convention when H == W (and for scale whatever the shape): equal up to rounding; rotation of 12x10 is not
    square, wide = _batch(4, 3, 10, 10), _batch()
    for piece in DSA_PIECES:
        for s in range(5):
            for x in (square, wide):
                a, b = dsa(x, piece, s), dsa(x, piece, s, align_corners=False)
                if piece not in ("scale", "rotate"):
                    assert torch.equal(a, b)
                elif piece == "rotate" and x is wide:
                    assert (a - b).abs().max() > 1e-2
                else:
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_bad_draws_and_align_corners_name_what_is_allowed() -> None:
    x = _batch()
    with pytest.raises(ValueError, match=r"draws must be one of 'independent', 'reference', got 'ref'"):
        dsa(x, "crop", 0, draws="ref")
    with pytest.raises(ValueError, match=r"align_corners must be true or false, got 1"):
        dsa(x, "crop", 0, align_corners=1)


# ---------------------------------------------------------------- DM's settings

@pytest.fixture(scope="module")
def digits():
    return ddnb.load_dataset("digits")


def test_dm_reference_settings_equal_official_per_class_loop(digits) -> None:
    torch.manual_seed(0)
    c, h, _ = digits.image_shape
    net = get_model("convnet3", c, digits.num_classes, h).requires_grad_(False)
    images, _ = init_synthetic(digits, 3, seed=1)
    g = torch.Generator().manual_seed(5)
    real = M.sample_real(digits, 16, g)
    seeds = M.class_seeds(g, digits.num_classes, shared=True)
    assert len(set(seeds)) == 1
    aug = dict(draws="reference", align_corners=False)
    x = images.clone().requires_grad_(True)
    syn = M.syn_by_class(x, 3, digits.num_classes, 1, digits.image_size)
    loss = M.dm_loss(M.real_class_means(net.embed, real, seeds, DSA_STRATEGY, chunk=48, **aug),
                     M.syn_class_means(net.embed, syn, seeds, DSA_STRATEGY, **aug))
    loss.backward()
    # main_DM.py: one class at a time, both batches through the official DiffAugment with the class's seed
    y = images.clone().requires_grad_(True)
    ref = torch.tensor(0.0)
    for k in range(digits.num_classes):
        out_real = net.embed(official(real[k], DSA_STRATEGY, seeds[k], False)).detach()
        out_syn = net.embed(official(y[k * 3:(k + 1) * 3], DSA_STRATEGY, seeds[k], False))
        ref = ref + torch.sum((torch.mean(out_real, dim=0) - torch.mean(out_syn, dim=0)) ** 2)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=0)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-3, atol=1e-6 * float(y.grad.abs().max()))


def test_shared_class_seeds_take_the_first_per_class_seed() -> None:
    per_class = M.class_seeds(torch.Generator().manual_seed(3), 10)
    assert len(set(per_class)) == 10
    assert M.class_seeds(torch.Generator().manual_seed(3), 10, shared=True) == [per_class[0]] * 10


def test_dm_settings_in_every_budget_with_todays_defaults(digits) -> None:
    for budget in M.BUDGETS.values():
        assert (budget["dsa_draws"], budget["dsa_align_corners"], budget["class_seeds"]) == (
            "independent", True, "per_class")
    kw = dict(budget="smoke", seed=0, progress=False, iterations=2, batch_real=8)
    base, _ = ddnb.distill("dm", digits, 1, **kw)
    explicit, _ = ddnb.distill("dm", digits, 1, dsa_draws="independent", dsa_align_corners=True,
                               class_seeds="per_class", **kw)
    assert torch.equal(base.images, explicit.images)
    ref, _ = ddnb.distill("dm", digits, 1, dsa_draws="reference", dsa_align_corners=False, class_seeds="shared", **kw)
    assert torch.isfinite(ref.images).all() and not torch.equal(ref.images, base.images)
    assert ref.provenance["params"]["dsa_draws"] == "reference"


@pytest.mark.parametrize("key, value, allowed", [
    ("dsa_draws", "ref", "one of 'independent', 'reference'"),
    ("dsa_align_corners", "no", "true or false"),
    ("class_seeds", "per-class", "one of 'per_class', 'shared'"),
])
def test_dm_bad_setting_names_what_is_allowed(digits, key: str, value: str, allowed: str) -> None:
    with pytest.raises(ValueError, match=f"dm setting {key}={value!r} is not allowed; allowed: {allowed}"):
        ddnb.distill("dm", digits, 1, budget="smoke", **{key: value})
