"""Augmentations used by distillation: DSA, IDC factoring (multi-formation) and CutMix.

DSA (Zhao & Bilen 2021, "Dataset Condensation with Differentiable Siamese Augmentation") follows
`ParamDiffAug` / `DiffAugment` of the DC reference code (VICO-UoE/DatasetCondensation utils.py)
with aug_mode "S": each call picks ONE piece of the strategy (e.g. "crop") and applies its
functions ("color" = brightness, saturation, contrast). The IDC family's composition (prefix
"idc:", e.g. "idc:color_crop_cutout"; IDC/DREAM/DANCE `DiffAug` with single_aug) applies flip,
color and cutout, when the strategy names them, on EVERY call, plus ONE of the remaining pieces
(crop, scale, rotate), in the reference's order flip, color, the one piece, cutout. All ops are
affine in the input pixels, so gradients flow to the images. Siamese mode (`seed` given) draws one parameter set from a
private generator, shared by every row, so a real and a synthetic batch of any sizes get the
same transform and the global RNG is untouched. All index work uses gather / masks, so inputs
in any memory format (channels_last included) work.

Two draw modes (`draws`): "independent" (default) takes every number in turn from one generator
seeded with `seed`; "reference" re-seeds it before EVERY draw with seed, seed + 1, seed + 2, ... as
the reference's `set_seed_DiffAug` does (`latestseed` incremented per draw: the piece choice, then each
parameter), so on CPU its numbers equal the reference's for the same seed. `align_corners` sets
F.affine_grid / grid_sample of the affine pieces (scale, rotate): True is the behaviour of torch <= 1.2
(the reference's pinned torch 1.2.0, whose calls pass no align_corners), False the default since 1.3.
Both map a pixel's offset from the image centre through the same linear map when H == W, so on square
images they agree up to float rounding; only rotation of a non-square image differs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ddnb.settings import Bool, Choice, Int, require
from ddnb.utils import to_device

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DSA_PIECES = ("color", "crop", "cutout", "flip", "scale", "rotate")
IDC_PREFIX = "idc:"  # strategy prefix of the IDC composition (see the module docstring)
IDC_ALWAYS = ("flip", "color")  # pieces the IDC composition applies on every call before the drawn one
DSA_DRAWS = ("independent", "reference")  # how a seeded call draws its numbers (see the module docstring)


@dataclass(frozen=True)
class DSAParams:
    """Augmentation magnitudes of the reference `ParamDiffAug`, and align_corners of the affine pieces."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    align_corners: bool = True


DSA_PARAMS = DSAParams()


def parse_strategy(strategy: str) -> list[str]:
    """Split a DSA strategy string (optionally "idc:"-prefixed) into pieces; ValueError for an unknown piece."""
    if not isinstance(strategy, str):
        raise ValueError(f"DSA strategy must be a string like {DSA_STRATEGY!r}, got {strategy!r}")
    body = strategy[len(IDC_PREFIX):] if is_idc(strategy) else strategy
    if body.lower() in ("", "none"):
        return []
    pieces = body.split("_")
    for piece in pieces:
        if piece not in DSA_PIECES:
            raise ValueError(
                f"unknown DSA piece {piece!r} in strategy {strategy!r}; allowed pieces: "
                f"{', '.join(DSA_PIECES)} (joined by '_', optionally after {IDC_PREFIX!r}), or 'none'"
            )
    return pieces


def is_idc(strategy: str) -> bool:
    """Whether a strategy string asks for the IDC composition (prefix "idc:")."""
    return strategy.startswith(IDC_PREFIX)


class Draws:
    """The random numbers of one dsa call: a private generator (seed given) or the global RNG (seed None),
    re-seeded with seed, seed + 1, ... before each draw when `reseed` (the reference's `set_seed_DiffAug`)."""

    def __init__(self, seed: int | None, reseed: bool = False):
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.next_seed = seed if reseed else None

    def next(self) -> torch.Generator | None:
        """The generator to take the next draw from (re-seeded first in the reference mode)."""
        if self.next_seed is not None:
            self.generator.manual_seed(self.next_seed)
            self.next_seed += 1
        return self.generator


def idc_pieces(pieces: list[str], draws: Draws) -> list[str]:
    """The pieces one IDC-composition call applies, in order: flip, color, one drawn of the rest, cutout."""
    rest = [p for p in pieces if p not in IDC_ALWAYS and p != "cutout"]
    drawn = [rest[int(torch.randint(len(rest), (1,), generator=draws.next()))]] if rest else []
    return [p for p in IDC_ALWAYS if p in pieces] + drawn + (["cutout"] if "cutout" in pieces else [])


def _uniform(n: int, g: Draws, x: torch.Tensor) -> torch.Tensor:
    """n uniform [0,1) draws (CPU, float32, from `g`), moved to x's device/dtype."""
    return to_device(torch.rand(n, generator=g.next()), x.device).to(x.dtype)


def _randint(low: int, high: int, n: int, g: Draws, x: torch.Tensor) -> torch.Tensor:
    """n integers in [low, high) (CPU draw from `g`), moved to x's device."""
    return to_device(torch.randint(low, high, (n,), generator=g.next()), x.device)


def _brightness(x: torch.Tensor, n: int, g: Draws, p: DSAParams) -> torch.Tensor:
    """Add (r - 0.5) * brightness to every pixel."""
    r = _uniform(n, g, x).view(-1, 1, 1, 1)
    return x + (r - 0.5) * p.brightness


def _saturation(x: torch.Tensor, n: int, g: Draws, p: DSAParams) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean by r * saturation."""
    r = _uniform(n, g, x).view(-1, 1, 1, 1)
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (r * p.saturation) + mean


def _contrast(x: torch.Tensor, n: int, g: Draws, p: DSAParams) -> torch.Tensor:
    """Scale each image's deviation from its mean by r + contrast."""
    r = _uniform(n, g, x).view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (r + p.contrast) + mean


def _flip(x: torch.Tensor, n: int, g: Draws, p: DSAParams) -> torch.Tensor:
    """Mirror left-right with probability prob_flip."""
    r = _uniform(n, g, x).view(-1, 1, 1, 1)
    return torch.where(r < p.prob_flip, x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Resample x (bilinear) through 2x3 affine matrices theta (1 or N of them), zeros outside."""
    theta = theta.expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, align_corners=align_corners)


def _scale(x: torch.Tensor, n: int, g: Draws, p: DSAParams) -> torch.Tensor:
    """Zoom each axis independently by a factor in [1/ratio_scale, ratio_scale]."""
    lo, hi = 1.0 / p.ratio_scale, p.ratio_scale
    sx = _uniform(n, g, x) * (hi - lo) + lo
    sy = _uniform(n, g, x) * (hi - lo) + lo
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _affine(x, theta, p.align_corners)


def _rotate(x: torch.Tensor, n: int, g: Draws, p: DSAParams) -> torch.Tensor:
    """Rotate by an angle in [-ratio_rotate, ratio_rotate] degrees."""
    angle = (_uniform(n, g, x) - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta, p.align_corners)


def _crop(x: torch.Tensor, n: int, g: Draws, p: DSAParams) -> torch.Tensor:
    """Translate by integer shifts up to ratio_crop_pad of the side, zero-filling (pad-and-crop)."""
    N, C, H, W = x.shape
    shift_h, shift_w = int(H * p.ratio_crop_pad + 0.5), int(W * p.ratio_crop_pad + 0.5)
    th = _randint(-shift_h, shift_h + 1, n, g, x)
    tw = _randint(-shift_w, shift_w + 1, n, g, x)
    rows = (torch.arange(H, device=x.device) + th.view(-1, 1) + 1).clamp(0, H + 1)  # index into padded
    cols = (torch.arange(W, device=x.device) + tw.view(-1, 1) + 1).clamp(0, W + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    out = padded.gather(2, rows.view(-1, 1, H, 1).expand(N, C, H, W + 2))
    return out.gather(3, cols.view(-1, 1, 1, W).expand(N, C, H, W))


def _cutout(x: torch.Tensor, n: int, g: Draws, p: DSAParams) -> torch.Tensor:
    """Zero a ratio_cutout-sized rectangle (clipped at the border) centred at a random pixel."""
    _, _, H, W = x.shape
    ch, cw = int(H * p.ratio_cutout + 0.5), int(W * p.ratio_cutout + 0.5)
    top = _randint(0, H + (1 - ch % 2), n, g, x).view(-1, 1, 1, 1) - ch // 2
    left = _randint(0, W + (1 - cw % 2), n, g, x).view(-1, 1, 1, 1) - cw // 2
    i = torch.arange(H, device=x.device).view(1, 1, H, 1)
    j = torch.arange(W, device=x.device).view(1, 1, 1, W)
    inside = (i >= top) & (i < top + ch) & (j >= left) & (j < left + cw)
    return x * (~inside).to(x.dtype)


_PIECE_FNS = {
    "color": (_brightness, _saturation, _contrast),
    "crop": (_crop,),
    "cutout": (_cutout,),
    "flip": (_flip,),
    "scale": (_scale,),
    "rotate": (_rotate,),
}


def dsa(x: torch.Tensor, strategy: str = DSA_STRATEGY, seed: int | None = None, draws: str = "independent",
        align_corners: bool = True) -> torch.Tensor:
    """Differentiable siamese augmentation of a (N,C,H,W) batch: one strategy piece per call (DSA), or
    the IDC composition for an "idc:" strategy (flip, color, cutout every call, one of the rest).

    seed given: one parameter set for the whole batch drawn from a private CPU generator seeded
    with `seed`, so any two batches augmented with the same seed get the same op and parameters
    (the global RNG is untouched). seed None: per-sample parameters from the global RNG.
    draws: "independent" or "reference" (re-seed before every draw, see the module docstring; no
    effect without a seed, as in the reference); align_corners: of scale and rotate.
    Strategy "none" (or "") returns x unchanged.
    """
    pieces = parse_strategy(strategy)
    if x.dim() != 4:
        raise ValueError(f"dsa expects a 4-D (N,C,H,W) batch, got shape {tuple(x.shape)}")
    require("seed", seed, Int(None, optional=True))
    require("draws", draws, Choice(*DSA_DRAWS))
    require("align_corners", align_corners, Bool())
    if not pieces:
        return x
    g = Draws(seed, reseed=draws == "reference")
    params = replace(DSA_PARAMS, align_corners=align_corners)
    n = 1 if seed is not None else x.shape[0]
    if is_idc(strategy):
        chosen = idc_pieces(pieces, g)
    else:
        chosen = [pieces[int(torch.randint(len(pieces), (1,), generator=g.next()))]]
    for piece in chosen:
        for fn in _PIECE_FNS[piece]:
            x = fn(x, n, g, params)
    return x


def _check_factor(factor: int) -> None:
    """ValueError unless factor is a positive int."""
    require("factor (1 = no factoring)", factor, Int(1))


def factor_decode(x: torch.Tensor, factor: int, image_size: int) -> torch.Tensor:
    """Split each stored image into factor x factor tiles and upsample each to image_size (IDC).

    Output order is IDC's `decode_zoom`: tile-major, out[t * N + n] is tile t of stored image n,
    tiles numbered row by row (t = i * factor + j for tile row i, tile column j). Labels in the
    same order are `factor_labels(y, factor)`. Upsampling is bilinear, align_corners=False.
    """
    _check_factor(factor)
    if x.dim() != 4:
        raise ValueError(f"factor_decode expects a 4-D (N,C,h,w) batch, got shape {tuple(x.shape)}")
    _, _, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"stored images of size {h}x{w} cannot be split into {factor}x{factor} tiles; "
                         f"factor must divide both sides")
    th, tw = h // factor, w // factor
    tiles = [x[:, :, i * th:(i + 1) * th, j * tw:(j + 1) * tw] for i in range(factor) for j in range(factor)]
    out = torch.cat(tiles)
    if (th, tw) == (image_size, image_size):
        return out
    return F.interpolate(out, size=(image_size, image_size), mode="bilinear", align_corners=False)


def factor_labels(y: torch.Tensor, factor: int) -> torch.Tensor:
    """Labels of the stored images repeated in `factor_decode`'s (tile-major) order."""
    _check_factor(factor)
    return y.repeat(factor * factor, *([1] * (y.dim() - 1)))


def factor_encode(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Tile N*f*f full images into N stored images, each downsampled (area) to side // f (init).

    The inverse direction of `factor_decode`: x[t * N + n] becomes tile t of stored image n.
    """
    _check_factor(factor)
    if x.dim() != 4:
        raise ValueError(f"factor_encode expects a 4-D (N,C,H,W) batch, got shape {tuple(x.shape)}")
    total, c, h, w = x.shape
    if total % (factor * factor):
        raise ValueError(f"factor_encode needs a multiple of factor**2 = {factor * factor} images, got {total}")
    if h % factor or w % factor:
        raise ValueError(f"images of size {h}x{w} cannot hold {factor}x{factor} tiles; factor must divide both sides")
    small = F.interpolate(x, size=(h // factor, w // factor), mode="area")
    n = total // (factor * factor)
    grid = small.reshape(factor, factor, n, c, h // factor, w // factor)  # (i, j, n, c, th, tw)
    return grid.permute(2, 3, 0, 4, 1, 5).reshape(n, c, h, w)


def cutmix(
    x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019): paste a box from a shuffled batch; lam = exact unmixed fraction.

    Returns (x_mixed, y_a, y_b, lam); the loss is lam * loss(y_a) + (1 - lam) * loss(y_b).
    Randomness comes from `generator` (a CPU torch.Generator) or the global torch RNG.
    """
    if not alpha > 0:
        raise ValueError(f"cutmix alpha must be > 0, got {alpha!r}")
    if x.dim() != 4 or x.shape[0] != y.shape[0]:
        raise ValueError(f"cutmix expects x (N,C,H,W) and y with N rows, got {tuple(x.shape)} and {tuple(y.shape)}")
    _, _, H, W = x.shape
    beta_seed = int(torch.randint(2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(beta_seed).beta(alpha, alpha))
    perm = to_device(torch.randperm(x.shape[0], generator=generator), x.device)
    cut_h, cut_w = int(H * math.sqrt(1.0 - lam)), int(W * math.sqrt(1.0 - lam))
    cy = int(torch.randint(H, (1,), generator=generator))
    cx = int(torch.randint(W, (1,), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
    box = torch.zeros(1, 1, H, W, dtype=x.dtype, device=x.device)
    box[..., top:bottom, left:right] = 1
    mixed = x * (1 - box) + x[perm] * box
    lam = 1.0 - (bottom - top) * (right - left) / (H * W)
    return mixed, y, y[perm], lam
