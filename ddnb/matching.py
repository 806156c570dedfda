"""Matching losses the distillation methods share: mean feature (DM), MMD, layer-wise gradient
distance (DC/DSA), normalized trajectory distance (MTT), calibration cross-entropy (DANCE)."""
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
