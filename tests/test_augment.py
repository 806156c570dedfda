"""Tests for ddnb.augment: DSA ops against hand-made images and autograd, factoring, CutMix."""
from __future__ import annotations

import pytest
import torch

from ddnb.augment import DSA_PARAMS, DSA_PIECES, DSA_STRATEGY, cutmix, dsa, factor_decode, factor_encode, factor_labels


def _ramp(n: int = 1, c: int = 1, h: int = 8, w: int = 8) -> torch.Tensor:
    """An asymmetric image with distinct, nonzero pixel values (1, 2, 3, ...)."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float64).reshape(n, c, h, w)


@pytest.mark.parametrize("piece", DSA_PIECES)
def test_autograd_gradient_matches_finite_difference(piece: str) -> None:
    # Every DSA op is affine in the pixels for fixed parameters, so f(x + u) - f(x) = J u exactly.
    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    u, v = torch.randn_like(x), torch.randn(3, 3, 8, 8, dtype=torch.float64)
    (grad,) = torch.autograd.grad((dsa(x, piece, seed=5) * v).sum(), x)
    with torch.no_grad():
        jvp = (dsa(x + u, piece, seed=5) - dsa(x, piece, seed=5)) * v
    torch.testing.assert_close((grad * u).sum(), jvp.sum())
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("piece", DSA_PIECES)
@pytest.mark.parametrize("seed", [None, 1])
def test_channels_last_one_channel(piece: str, seed: int | None) -> None:
    x = torch.randn(4, 1, 28, 28)
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    out = dsa(x_cl, piece, seed=seed)
    out.sum().backward()
    assert out.shape == x.shape and x_cl.grad is not None
    if seed is not None:
        torch.testing.assert_close(out, dsa(x, piece, seed=seed))


@pytest.mark.parametrize("strategy", [DSA_STRATEGY, *DSA_PIECES])
def test_siamese_same_transform_for_any_batch_size(strategy: str) -> None:
    torch.manual_seed(0)
    real, k = torch.randn(6, 3, 16, 16), 2
    for seed in range(4):
        torch.testing.assert_close(dsa(real, strategy, seed=seed)[:k], dsa(real[:k], strategy, seed=seed))


def test_seeded_batch_shares_one_parameter_set() -> None:
    x = torch.randn(1, 3, 16, 16).repeat(5, 1, 1, 1)
    for seed in range(6):
        out = dsa(x, DSA_STRATEGY, seed=seed)
        torch.testing.assert_close(out, out[:1].expand_as(out))


def test_seed_reproducible_distinct_and_leaves_global_rng() -> None:
    x = torch.randn(2, 3, 16, 16)
    state = torch.get_rng_state()
    outs = [dsa(x, seed=s) for s in range(10)]
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(dsa(x, seed=3), outs[3], rtol=0, atol=0)
    distinct = {tuple(o.flatten()[:50].tolist()) for o in outs}
    assert len(distinct) >= 8


def test_unseeded_uses_per_sample_parameters() -> None:
    x = torch.zeros(64, 1, 4, 4)
    torch.manual_seed(0)
    out = dsa(x, "color")  # brightness shifts each sample by its own (r - 0.5)
    shifts = out[:, 0, 0, 0]
    assert torch.unique(shifts).numel() == 64
    assert shifts.min() >= -0.5 and shifts.max() < 0.5


def test_brightness_magnitude_matches_reference() -> None:
    # On a constant 1-channel image saturation and contrast are no-ops: out = x + (r - 0.5) * 1.0.
    x = torch.full((1, 1, 4, 4), 0.3)
    shifts = torch.tensor([float(dsa(x, "color", seed=s)[0, 0, 0, 0] - 0.3) for s in range(200)])
    assert DSA_PARAMS.brightness == 1.0
    assert shifts.min() >= -0.5 - 1e-6 and shifts.max() <= 0.5 + 1e-6
    assert shifts.min() < -0.4 and shifts.max() > 0.4


def test_flip_on_asymmetric_image() -> None:
    x = _ramp(2, 3, 5, 7)
    results = []
    for seed in range(20):
        out = dsa(x, "flip", seed=seed)
        flipped = torch.equal(out, torch.flip(x, dims=[3]))
        assert flipped or torch.equal(out, x)
        results.append(flipped)
    assert any(results) and not all(results)


def test_crop_is_integer_shift_with_zero_fill() -> None:
    x = _ramp(1, 1, 16, 16)
    max_shift = int(16 * DSA_PARAMS.ratio_crop_pad + 0.5)
    seen = set()
    for seed in range(15):
        out = dsa(x, "crop", seed=seed)
        matches = []
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                expected = torch.zeros_like(x)
                src = x[..., max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)]
                expected[..., max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)] = src
                if torch.equal(out, expected):
                    matches.append((dy, dx))
        assert len(matches) == 1, f"seed {seed}: output is not one integer shift of the input"
        seen.add(matches[0])
    assert len(seen) > 3


def test_cutout_zeroes_one_rectangle() -> None:
    x = _ramp(1, 2, 12, 12)
    side = int(12 * DSA_PARAMS.ratio_cutout + 0.5)
    for seed in range(10):
        out = dsa(x, "cutout", seed=seed)
        zero = out == 0
        assert torch.equal(zero[:, 0], zero[:, 1])  # same rectangle on every channel
        torch.testing.assert_close(out[~zero], x[~zero])
        rows = zero[0, 0].any(dim=1).nonzero().flatten()
        cols = zero[0, 0].any(dim=0).nonzero().flatten()
        assert 0 < len(rows) <= side and 0 < len(cols) <= side
        box = torch.zeros(12, 12, dtype=torch.bool)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        assert torch.equal(zero[0, 0], box)


def test_unknown_piece_lists_allowed() -> None:
    with pytest.raises(ValueError, match="allowed pieces: color, crop, cutout, flip, scale, rotate"):
        dsa(torch.zeros(1, 1, 4, 4), "color_blur")


def test_none_strategy_is_identity() -> None:
    x = torch.randn(2, 1, 4, 4)
    assert dsa(x, "none", seed=0) is x


def test_factor_round_trip_constant_images_exact() -> None:
    levels = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1)
    x = levels * torch.ones(8, 3, 16, 16)
    stored = factor_encode(x, 2)
    assert stored.shape == (2, 3, 16, 16)
    torch.testing.assert_close(factor_decode(stored, 2, 16), x)


def test_factor_round_trip_linear_ramps_exact_inside() -> None:
    # Area-downsampling then bilinear upsampling (align_corners=False) reproduces a linear ramp
    # exactly away from the one-pixel border, where bilinear clamps.
    p = torch.arange(32, dtype=torch.float64)
    slopes = torch.linspace(-1, 1, 8, dtype=torch.float64).view(8, 1, 1, 1)
    x = slopes * p.view(1, 1, 32, 1) + 0.5 * p.view(1, 1, 1, 32) + torch.zeros(8, 2, 32, 32, dtype=torch.float64)
    recovered = factor_decode(factor_encode(x, 2), 2, 32)
    torch.testing.assert_close(recovered[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])


def test_factor_round_trip_low_frequency_images() -> None:
    i = torch.linspace(0, 1, 32)
    smooth = torch.sin(2 * torch.pi * i).view(1, 1, 32, 1) * torch.cos(torch.pi * i).view(1, 1, 1, 32)
    x = smooth * torch.linspace(0.5, 2, 8).view(8, 1, 1, 1)
    error = (factor_decode(factor_encode(x, 2), 2, 32) - x).abs()
    assert error.mean() < 0.05 * x.abs().mean()


def test_factor_decode_order_and_labels() -> None:
    # Stored image n holds tiles (i, j); decoded row t * N + n is tile t = i * f + j of image n.
    stored = torch.zeros(2, 1, 4, 4)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                stored[n, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = 10 * n + 2 * i + j
    decoded = factor_decode(stored, 2, 2)
    assert decoded[:, 0, 0, 0].tolist() == [0, 10, 1, 11, 2, 12, 3, 13]
    assert factor_labels(torch.tensor([4, 7]), 2).tolist() == [4, 7, 4, 7, 4, 7, 4, 7]
    soft = torch.eye(2)
    assert torch.equal(factor_labels(soft, 2)[1::2], soft[[1, 1, 1, 1]])
    assert factor_decode(stored, 2, 8).shape == (8, 1, 8, 8)


def test_factor_bad_input() -> None:
    with pytest.raises(ValueError, match="factor must divide"):
        factor_decode(torch.zeros(1, 1, 10, 10), 3, 10)
    with pytest.raises(ValueError, match="multiple of factor"):
        factor_encode(torch.zeros(3, 1, 8, 8), 2)
    with pytest.raises(ValueError, match=r"factor \(1 = no factoring\) must be an int >= 1, got 0"):
        factor_decode(torch.zeros(1, 1, 8, 8), 0, 8)


def test_cutmix_lam_is_unmixed_fraction() -> None:
    n = 6
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 20, 24).clone()
    y = torch.arange(n)
    for seed in range(10):
        mixed, y_a, y_b, lam = cutmix(x, y, alpha=1.0, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(y_a, y)
        for k in range(n):
            own = (mixed[k] == float(y[k])).float().mean()
            if y_b[k] != y[k]:
                assert own.item() == pytest.approx(lam)
            assert ((mixed[k] == float(y[k])) | (mixed[k] == float(y_b[k]))).all()
    again = cutmix(x, y, generator=torch.Generator().manual_seed(3))
    first = cutmix(x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again[0], first[0]) and again[3] == first[3]


def test_cutmix_is_differentiable_and_validates() -> None:
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    mixed, *_ = cutmix(x, torch.arange(4), generator=torch.Generator().manual_seed(0))
    mixed.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))  # each pixel lands exactly once
    with pytest.raises(ValueError, match="alpha must be > 0"):
        cutmix(x, torch.arange(4), alpha=0.0)


# ---------------------------------------------------------------- the IDC composition

def _spy_pieces(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every piece dsa applies (the ops still run), in order."""
    import ddnb.augment as A

    applied: list[str] = []
    for piece, fns in list(A._PIECE_FNS.items()):
        def first(x, n, g, p, _fn=fns[0], _piece=piece):
            applied.append(_piece)
            return _fn(x, n, g, p)
        monkeypatch.setitem(A._PIECE_FNS, piece, (first, *fns[1:]))
    return applied


@pytest.mark.parametrize("seed", [None, *range(40)])
def test_idc_composition_applies_flip_color_cutout_every_call_and_one_of_the_rest(monkeypatch, seed) -> None:
    applied = _spy_pieces(monkeypatch)
    torch.manual_seed(0 if seed is None else seed)
    dsa(torch.randn(3, 3, 16, 16), "idc:" + DSA_STRATEGY, seed=seed)
    # the reference order (IDC/DREAM/DANCE DiffAug, single_aug): flip, color, one of crop/scale/rotate, cutout
    assert applied[:2] == ["flip", "color"] and applied[3] == "cutout" and len(applied) == 4
    assert applied[2] in ("crop", "scale", "rotate")


def test_idc_composition_draws_each_remaining_piece_and_dsa_draws_one_piece(monkeypatch) -> None:
    applied = _spy_pieces(monkeypatch)
    drawn = []
    for seed in range(60):
        applied.clear()
        dsa(torch.randn(2, 1, 8, 8), "idc:color_crop_cutout_flip_scale_rotate", seed=seed)
        drawn.append(applied[2])
    assert set(drawn) == {"crop", "scale", "rotate"}
    for seed in range(20):  # one-piece DSA applies exactly one piece per call
        applied.clear()
        dsa(torch.randn(2, 1, 8, 8), DSA_STRATEGY, seed=seed)
        assert len(applied) == 1
    applied.clear()
    dsa(torch.randn(2, 1, 8, 8), "idc:color_crop", seed=3)  # IDC's network-update strategy: both, every call
    assert applied == ["color", "crop"]


def test_idc_composition_effects_on_controlled_inputs() -> None:
    # constant images: color moves the value off 1 (brightness/contrast), cutout zeroes a 4x4 (clipped)
    # block, crop (the only remaining piece) shifts by <= 1 pixel with zero fill; a ramp shows the flip
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    ramp = torch.arange(64, dtype=torch.float64).reshape(1, 1, 8, 8)
    flips = 0
    for seed in range(30):
        out = dsa(ones, "idc:color_crop_cutout", seed=seed)[0, 0]
        zero = out == 0
        assert 4 <= int(zero.sum()) < 64  # the cutout block is there every call (>= its smallest clipped size)
        assert not torch.allclose(out[~zero], torch.ones_like(out[~zero]))  # color changed the kept pixels
        flipped = dsa(ramp, "idc:flip", seed=seed)
        assert torch.equal(flipped, ramp) or torch.equal(flipped, ramp.flip(3))
        flips += int(torch.equal(flipped, ramp.flip(3)))
    assert 5 < flips < 25  # flip with probability 0.5, drawn on every call


def test_idc_composition_is_siamese_and_differentiable() -> None:
    torch.manual_seed(0)
    real = torch.randn(6, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    for seed in range(5):
        a, b = dsa(real, "idc:" + DSA_STRATEGY, seed=seed), dsa(real[:2], "idc:" + DSA_STRATEGY, seed=seed)
        torch.testing.assert_close(a[:2], b)
    u = torch.randn_like(real)
    (grad,) = torch.autograd.grad((dsa(real, "idc:" + DSA_STRATEGY, seed=7) * u).sum(), real)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown DSA piece 'blur'"):
        dsa(real, "idc:color_blur")
