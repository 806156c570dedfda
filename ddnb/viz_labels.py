"""Figures of notebook 05 (soft labels, paper 004): accuracy per set per regime per IPC, accuracy
against epochs with fitted scaling laws, and scatter plots with a rank correlation (DCS, EL2N vs EL2N-SL)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ddnb.viz import plt

REGIME_COLORS = {"hl": "tab:gray", "sl": "tab:blue", "sl+kd": "tab:green"}


def _require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """ValueError naming the missing columns, or for an empty table."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"table has no column(s) {missing}; its columns: {list(df.columns)}")
    if df.empty:
        raise ValueError("the table is empty; give at least one row")


def regime_bars(table: pd.DataFrame, *, panel: str = "ipc", group: str = "set", hue: str = "regime",
                title: str | None = None, ylabel: str = "test accuracy (%)") -> Figure:
    """Grouped bars of mean accuracy (std error bars): one panel per `panel` value, groups by `group`, bars by `hue`."""
    _require_columns(table, (panel, group, hue, "mean", "std"))
    panels = list(dict.fromkeys(table[panel]))
    groups = list(dict.fromkeys(table[group]))
    hues = list(dict.fromkeys(table[hue]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(1.0 + 0.9 * len(groups), 2.8 * len(panels)), squeeze=False)
    width = 0.8 / len(hues)
    for ax, p in zip(axes[:, 0], panels):
        part = table[table[panel] == p]
        for j, h in enumerate(hues):
            rows = part[part[hue] == h].set_index(group).reindex(groups)
            x = np.arange(len(groups)) + (j - (len(hues) - 1) / 2) * width
            ax.bar(x, rows["mean"], width, yerr=rows["std"], capsize=2, label=str(h),
                   color=REGIME_COLORS.get(str(h)))
        ax.set_xticks(np.arange(len(groups)), [str(g) for g in groups], rotation=20, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{panel} {p}", fontsize=9)
        ax.legend(fontsize=7, ncol=len(hues))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def curve_panels(panels: Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]], *,
                 fits: Mapping[str, Mapping[str, Any]] | None = None, title: str | None = None,
                 ylabel: str = "test accuracy (%)") -> Figure:
    """Accuracy against epochs: one panel per key of `panels`, a line (mean, std band over seeds) per set;
    a dashed fitted curve where fits[panel][set] (an object with .predict(epochs)) is given."""
    if not panels or not all(panels.values()):
        raise ValueError("panels must map at least one panel name to at least one set's curve {epoch: per-seed}")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels.items()):
        for i, (label, curve) in enumerate(curves.items()):
            epochs = np.array(sorted(curve))
            ys = np.array([curve[e] for e in epochs], dtype=float)
            mean, std = ys.mean(1), ys.std(1)
            color = f"C{i}"
            ax.plot(epochs, mean, marker="o", ms=3, color=color, label=str(label))
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15)
            fit = (fits or {}).get(name, {}).get(label)
            if fit is not None:
                grid = np.arange(1, int(epochs.max()) + 1)
                ax.plot(grid, fit.predict(grid), ls="--", lw=1, color=color)
        ax.set_xlabel("training epochs")
        ax.set_ylabel(ylabel)
        ax.set_title(str(name), fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def rank_scatter(x: Sequence[float], y: Sequence[float], *, xlabel: str, ylabel: str, rho: float | None = None,
                 groups: Sequence[Any] | None = None, title: str | None = None) -> Figure:
    """Scatter of y against x (colored by `groups` when given) with the rank correlation in the title."""
    xv, yv = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xv.ndim != 1 or xv.shape != yv.shape or xv.size == 0:
        raise ValueError(f"x and y must be two 1-D sequences of the same non-zero length, got {xv.shape}, {yv.shape}")
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    if groups is None:
        ax.scatter(xv, yv, s=8, alpha=0.6)
    else:
        g = np.asarray(list(groups), dtype=object)
        if g.shape != xv.shape:
            raise ValueError(f"groups must give one label per point ({xv.size}), got {g.size}")
        for label in dict.fromkeys(g.tolist()):
            ax.scatter(xv[g == label], yv[g == label], s=18, alpha=0.8, label=str(label))
        ax.legend(fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    head = f"{title}\n" if title else ""
    ax.set_title(head + (f"Spearman rho = {rho:.2f}" if rho is not None else ""), fontsize=9)
    fig.tight_layout()
    return fig
