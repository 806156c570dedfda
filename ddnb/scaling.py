"""The data-aware scaling law of paper 004 §3 (Eq. 7-8, after Goyal et al., "Scaling laws for data
filtering", CVPR 2024): performance after k epochs over a pool of n images, where every repetition
of the pool is worth less than the one before.

    y_k = a * n_1**b_1 * prod_{j=2..k} (n_j / n_{j-1})**b_j + d,    b_{j+1} = b * delta**j,
    delta = (1/2)**(1/tau)

with n_j = j * n the images seen after epoch j (so n_j / n_{j-1} = j / (j - 1)). a scales, b is the
utility of the pool (with y an error, b < 0: the more negative, the faster the error falls), delta
(or the half-life tau, in repetitions) how fast that utility decays with repetition, d the
irreducible level. With one pool size n, a and n**b are confounded: the fit finds A = a * n**b and
reports a = A / n**b for the given n. Even so, A, b and d trade off along a shallow valley (a
curve that flattens early pins the start and the plateau, not how they split into A and d), so
their bootstrap intervals are wider than tau's.

For fixed (b, tau) the curve is linear in (A, d), so `fit_scaling_law` solves (A, d) in closed form
on a (b, tau) grid, then refines all four parameters with scipy's least_squares from the best grid
point (the original authors found plain optimizers unstable from arbitrary starts). Note: the
"delta" values 004 §3 reports (1.9474, 2.8947, 5.2632) are points of linspace(1, 10, 20), i.e. grid
values of tau, not of delta in (0, 1]; ddnb reports both.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy.optimize import least_squares

B_GRID = tuple(np.round(np.linspace(-1.0, 1.0, 81), 6))
TAU_GRID = tuple(np.round(np.geomspace(0.25, 100.0, 49), 6))


def delta_of_tau(tau: float) -> float:
    """delta = (1/2)**(1/tau): the factor by which each repetition's utility exponent shrinks (004 Eq. 8)."""
    return float(0.5 ** (1.0 / tau))


def _log_product(epochs: np.ndarray, b: float, tau: float) -> np.ndarray:
    """log prod_{j=2..k} (j / (j-1))**(b * delta**(j-1)) for each k in `epochs` (ints >= 1)."""
    kmax = int(epochs.max())
    j = np.arange(2, kmax + 1, dtype=float)
    terms = b * delta_of_tau(tau) ** (j - 1) * np.log(j / (j - 1))
    cum = np.concatenate([[0.0], np.cumsum(terms)])  # cum[k-1] = sum over j = 2..k
    return cum[epochs.astype(int) - 1]


def scaling_curve(epochs: Sequence[int] | np.ndarray, a: float, b: float, tau: float, d: float,
                  n: float = 1.0) -> np.ndarray:
    """004 Eq. 7-8: the predicted performance y_k after each number of epochs k (pool of n images)."""
    k = _check_epochs(epochs)
    return a * n**b * np.exp(_log_product(k, b, tau)) + d


@dataclass
class ScalingFit:
    """A fitted scaling law: a, b, tau, delta = (1/2)**(1/tau), d, the pool size n and the residual sum of squares."""

    a: float
    b: float
    tau: float
    delta: float
    d: float
    n: float
    rss: float

    def predict(self, epochs: Sequence[int] | np.ndarray) -> np.ndarray:
        """The fitted curve at the given epochs."""
        return scaling_curve(epochs, self.a, self.b, self.tau, self.d, self.n)

    def to_dict(self) -> dict[str, float]:
        """Plain JSON-ready dict."""
        return asdict(self)


def _check_epochs(epochs: Sequence[int] | np.ndarray) -> np.ndarray:
    """The epochs as a 1-D int array of values >= 1 (ValueError otherwise)."""
    k = np.asarray(epochs)
    if k.ndim != 1 or k.size == 0 or not np.all(np.isfinite(k)) or np.any(k < 1) or np.any(k != np.round(k)):
        raise ValueError(f"epochs must be a non-empty 1-D sequence of integers >= 1, got {epochs!r}")
    return k.astype(int)


def _linear_ad(p: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (A, d) of y = A * p + d and its residual sum of squares."""
    design = np.stack([p, np.ones_like(p)], 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return float(coef[0]), float(coef[1]), float(resid @ resid)


def fit_scaling_law(epochs: Sequence[int] | np.ndarray, y: Sequence[float] | np.ndarray, n: float = 1.0,
                    b_grid: Sequence[float] = B_GRID, tau_grid: Sequence[float] = TAU_GRID,
                    refine: bool = True) -> ScalingFit:
    """Fit 004 Eq. 7-8 to one curve y(k): grid over (b, tau) with (A, d) solved exactly, then least_squares.

    `n` is the pool size (it only converts A = a * n**b into a). The refinement keeps tau within the
    grid's range and starts from the best grid point; it is kept only when it lowers the residual.
    """
    k = _check_epochs(epochs)
    yv = np.asarray(y, dtype=float)
    if yv.shape != k.shape or not np.all(np.isfinite(yv)):
        raise ValueError(f"y must hold one finite value per epoch ({k.size}), got shape {yv.shape}")
    if k.size < 4 or np.unique(k).size < 4:
        raise ValueError(f"fitting four parameters needs at least 4 distinct epochs, got {np.unique(k).size}")
    if not n > 0:
        raise ValueError(f"n must be > 0, got {n!r}")
    best = (np.inf, 0.0, 0.0, 1.0, 0.0)
    for b in b_grid:
        for tau in tau_grid:
            A, d, rss = _linear_ad(np.exp(_log_product(k, b, tau)), yv)
            if rss < best[0]:
                best = (rss, A, float(b), float(tau), d)
    rss, A, b, tau, d = best
    if refine:
        lo, hi = min(tau_grid), max(tau_grid)

        def resid(p: np.ndarray) -> np.ndarray:
            return p[0] * np.exp(_log_product(k, p[1], np.exp(p[2]))) + p[3] - yv

        res = least_squares(resid, [A, b, np.log(tau), d], bounds=([-np.inf, -np.inf, np.log(lo), -np.inf],
                                                                     [np.inf, np.inf, np.log(hi), np.inf]),
                            x_scale="jac", ftol=1e-12, xtol=1e-12, gtol=1e-12)
        new_rss = float(res.fun @ res.fun)
        if res.success and new_rss < rss:
            A, b, tau, d, rss = float(res.x[0]), float(res.x[1]), float(np.exp(res.x[2])), float(res.x[3]), new_rss
    return ScalingFit(a=A / n**b, b=b, tau=tau, delta=delta_of_tau(tau), d=d, n=float(n), rss=rss)


def bootstrap_fit(epochs: Sequence[int] | np.ndarray, curves: Sequence[Sequence[float]] | np.ndarray,
                  n: float = 1.0, n_boot: int = 200, seed: int = 0, level: float = 0.9,
                  **fit_kw: Any) -> dict[str, Any]:
    """Uncertainty of the fit by a bootstrap over seeds: `curves` is (seeds, epochs); each resample of
    the seeds (with replacement) is averaged and fitted. Returns the fit of the mean curve ("fit"),
    and per parameter its bootstrap mean, std and `level` percentile interval ("b": {...}, ...)."""
    ys = np.asarray(curves, dtype=float)
    if ys.ndim != 2 or ys.shape[0] < 2:
        raise ValueError(f"curves must be (seeds, epochs) with at least 2 seeds, got shape {ys.shape}")
    if not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot must be an int >= 2, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    fits = [fit_scaling_law(epochs, ys[rng.integers(0, ys.shape[0], ys.shape[0])].mean(0), n, **fit_kw)
            for _ in range(n_boot)]
    out: dict[str, Any] = {"fit": fit_scaling_law(epochs, ys.mean(0), n, **fit_kw).to_dict(), "n_boot": n_boot}
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    for name in ("a", "b", "tau", "delta", "d"):
        v = np.array([getattr(f, name) for f in fits])
        lo, hi = np.percentile(v, q)
        out[name] = {"mean": float(v.mean()), "std": float(v.std()), "low": float(lo), "high": float(hi)}
    return out
