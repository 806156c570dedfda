"""DCS (paper 004 §7): how well a distillation loss predicts the accuracy of the sets it scores, as a
Spearman correlation after controlling for subset size.

Size confounds the raw correlation: bigger sets train better models and usually have a different
loss (a mean over more images), so loss and accuracy correlate through size alone. 004 says it
"accounts for the confounding effect of subset size" without saying how; ddnb's choice is a setting
(`control`):
  "group"   (default) rank-transform loss and accuracy over all sets, subtract each value's mean rank
            within its size group, and take the Pearson correlation of what is left (within-size
            Spearman, pooled): for sizes that come in a few values (IPCs);
  "linear"  partial Spearman: regress the ranks of loss and of accuracy each on the ranks of size
            (with an intercept) and correlate the residuals: for sizes that vary continuously;
  "none"    the plain Spearman correlation.
Sign: DCS is the correlation of the loss with the error (= minus its correlation with accuracy), so a
positive DCS means lower loss goes with better sets, as 004 reads it (DM's rho = 0.41).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

CONTROLS = ("group", "linear", "none")


def _residual(v: np.ndarray, sizes: np.ndarray, control: str) -> np.ndarray:
    """v with the part explained by size removed (see the module docstring)."""
    if control == "none":
        return v - v.mean()
    if control == "group":
        out = v.astype(float).copy()
        for s in np.unique(sizes):
            members = sizes == s
            out[members] -= v[members].mean()
        return out
    design = np.stack([np.ones_like(v), rankdata(sizes)], 1)
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ coef


def dcs(losses: Sequence[float], accuracies: Sequence[float], sizes: Sequence[float],
        control: str = "group") -> float:
    """Spearman correlation of loss with error (-accuracy) after controlling for size; NaN when nothing varies
    once size is controlled for (e.g. a loss that is a function of size alone, without noise)."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    loss, acc, size = (np.asarray(v, dtype=float) for v in (losses, accuracies, sizes))
    if not loss.ndim == acc.ndim == size.ndim == 1 or not loss.shape == acc.shape == size.shape or loss.size < 3:
        raise ValueError(f"losses, accuracies and sizes must be three 1-D sequences of the same length (>= 3), "
                         f"got shapes {loss.shape}, {acc.shape}, {size.shape}")
    if not (np.all(np.isfinite(loss)) and np.all(np.isfinite(acc)) and np.all(np.isfinite(size))):
        raise ValueError("losses, accuracies and sizes must be finite")
    r_loss = _residual(rankdata(loss), size, control)
    r_err = _residual(rankdata(-acc), size, control)
    denom = np.sqrt((r_loss @ r_loss) * (r_err @ r_err))
    return float(r_loss @ r_err / denom) if denom > 1e-12 * max(1.0, loss.size**3) else float("nan")
