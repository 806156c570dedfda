"""Matching losses the distillation methods share: mean feature (DM), MMD, layer-wise gradient
distance (DC/DSA), normalized trajectory distance (MTT), calibration cross-entropy (DANCE),
BatchNorm-statistics matching (SRe2L, DWA)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def mean_feature_loss(feat_real: Tensor, feat_syn: Tensor) -> Tensor:
    """DM (001 Eq. 2): squared L2 distance between the mean embeddings of two batches of one class."""
    return ((feat_real.mean(0) - feat_syn.mean(0)) ** 2).sum()


def _rbf_kernels(x: Tensor, y: Tensor, bandwidths: Sequence[float] | None) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian kernel matrices K_xx, K_yy, K_xy summed over bandwidths (median heuristic when None)."""
    xx, yy, xy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
    if bandwidths is None:
        med = torch.cat([xx.flatten(), yy.flatten(), xy.flatten()]).median().detach().clamp_min(1e-12)
        bandwidths = [float(med) * s for s in (0.25, 0.5, 1.0, 2.0, 4.0)]
    kxx = sum(torch.exp(-xx / b) for b in bandwidths)
    kyy = sum(torch.exp(-yy / b) for b in bandwidths)
    kxy = sum(torch.exp(-xy / b) for b in bandwidths)
    return kxx, kyy, kxy


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float] | None = None, unbiased: bool = False) -> Tensor:
    """Squared maximum mean discrepancy between samples x (n,d) and y (m,d) with a multi-bandwidth RBF kernel.

    Biased (V-statistic, always >= 0) by default; `unbiased=True` drops the diagonal terms.
    """
    x, y = x.flatten(1), y.flatten(1)
    kxx, kyy, kxy = _rbf_kernels(x, y, bandwidths)
    n, m = x.shape[0], y.shape[0]
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError(f"unbiased MMD needs at least 2 samples per set, got {n} and {m}")
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        return sxx + syy - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def gradient_distance(grads_real: Sequence[Tensor], grads_syn: Sequence[Tensor], metric: str = "ours") -> Tensor:
    """DC/DSA layer-wise gradient-matching distance, summed over parameters.

    "ours" is the reference code's distance: per output node, 1 - cosine similarity of the
    gradient rows, summed (biases skipped, as in the reference); "mse" and "cos" flatten everything.
    """
    if metric not in ("ours", "mse", "cos"):
        raise ValueError(f"metric must be 'ours', 'mse' or 'cos', got {metric!r}")
    if len(grads_real) != len(grads_syn):
        raise ValueError(f"got {len(grads_real)} real and {len(grads_syn)} synthetic gradients")
    if metric == "ours":
        total = grads_syn[0].new_zeros(())
        for gr, gs in zip(grads_real, grads_syn):
            total = total + _layer_distance(gr, gs)
        return total
    gr = torch.cat([g.flatten() for g in grads_real])
    gs = torch.cat([g.flatten() for g in grads_syn])
    if metric == "mse":
        return ((gr - gs) ** 2).sum()
    return 1 - F.cosine_similarity(gr, gs, dim=0, eps=1e-6)


def _layer_distance(gr: Tensor, gs: Tensor) -> Tensor:
    """One layer's term of the reference DC distance (1 - cosine per output unit, biases ignored)."""
    if gr.dim() == 1:  # bias / norm parameters: the reference code returns 0 for them
        return gs.new_zeros(())
    gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
    num = (gr * gs).sum(-1)
    den = gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6
    return (1 - num / den).sum()


def trajectory_loss(student_end: Tensor, expert_start: Tensor, expert_end: Tensor) -> Tensor:
    """MTT (004 Eq. 4): ||theta_student_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2."""
    num = ((student_end - expert_end) ** 2).sum()
    den = ((expert_start - expert_end) ** 2).sum().clamp_min(1e-12)
    return num / den


def calibration_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """DANCE (001 Eq. 5): cross-entropy of synthetic images under an expert (hard or soft labels)."""
    if labels.dim() == 2:
        return -(labels * F.log_softmax(logits, -1)).sum(-1).mean()
    return F.cross_entropy(logits, labels)


def bn_input_stats(model: torch.nn.Module, x: Tensor) -> tuple[Tensor, list[tuple[torch.nn.Module, Tensor, Tensor]]]:
    """(logits, [(bn layer, batch mean, batch variance) per BatchNorm layer in forward order]) of one forward.

    Mean and variance are of each BN layer's input over batch and space, per channel, the variance
    biased (divided by N*H*W) as BN normalizes with; the model's mode is left as is (SRe2L runs eval).
    """
    stats: list[tuple[torch.nn.Module, Tensor, Tensor]] = []

    def hook(module: torch.nn.Module, inputs: tuple[Tensor, ...]) -> None:
        h = inputs[0]
        dims = [0, *range(2, h.dim())]
        stats.append((module, h.mean(dims), h.var(dims, unbiased=False)))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, stats


def bn_matching_loss(model: torch.nn.Module, x: Tensor, var_weight: float = 1.0,
                     first_multiplier: float = 1.0) -> tuple[Tensor, Tensor]:
    """SRe2L (004 Eq. 1) / DWA (Eq. 2) BN-statistics loss and the logits of the same forward.

    sum_l w_l (||mu_l(x) - RM_l||_2 + var_weight * ||sigma_l^2(x) - RV_l||_2), with w_1 =
    first_multiplier (the SRe2L code weighs the first BN layer by 10) and w_l = 1 after; var_weight 1
    is SRe2L, another value DWA's lambda_var. ValueError when the model has no BatchNorm layer.
    """
    logits, stats = bn_input_stats(model, x)
    if not stats:
        raise ValueError("the BN-statistics loss needs a model with BatchNorm layers (e.g. convnet3 with "
                         "norm='batchnorm', resnet10_bn); this one has none")
    total = logits.new_zeros(())
    for i, (bn, mean, var) in enumerate(stats):
        term = torch.norm(mean - bn.running_mean, 2) + var_weight * torch.norm(var - bn.running_var, 2)
        total = total + (first_multiplier if i == 0 else 1.0) * term
    return total, logits
