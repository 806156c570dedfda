"""Figures a person would rather look at than read: image grids (denormalized), real next to
synthetic per class, accuracy bars with error bars, loss curves, overlaid distributions of groups
of values, and 2-D feature maps (a sampler's batches in its class, synthetic images among real
ones); and `save_figure` (atomic PNG).

Headless (no display, not inside a Jupyter kernel, no MPLBACKEND) matplotlib uses Agg; inside a
notebook the kernel's own backend is left alone.
"""
from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import matplotlib

if ("matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules and "MPLBACKEND" not in os.environ
        and sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
        and not os.environ.get("WAYLAND_DISPLAY")):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ddnb.settings import Int, require  # noqa: E402
from ddnb.utils import atomic_write_bytes  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd


def to_display(images: torch.Tensor, dataset: Any = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> np.ndarray:
    """Images (N,C,H,W) in a normalized pixel space -> (N,H,W,C) floats in [0,1] for imshow.

    The statistics come from `dataset` (anything with .mean/.std) or `mean`/`std`; without
    either, each image is stretched to [0,1] by its own min and max.
    """
    x = _as_images(images)
    if dataset is not None:
        mean, std = dataset.mean, dataset.std
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
    if mean is not None:
        if not len(mean) == len(std) == x.shape[1]:
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} need one value per channel ({x.shape[1]})")
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def mosaic(tiles: Sequence[np.ndarray | None], ncols: int, pad: int = 1) -> np.ndarray:
    """Tile (H,W,C) images in [0,1] row by row into one RGBA picture (torchvision's make_grid); None tiles
    and the `pad` pixels between tiles are transparent (alpha 0), so the figure background shows through."""
    if not tiles or all(t is None for t in tiles):
        raise ValueError("mosaic needs at least one image")
    from torchvision.utils import make_grid

    h, w, _ = next(t for t in tiles if t is not None).shape
    rgba = torch.zeros(max(len(tiles), ncols), 4, h, w)  # a short row keeps its ncols places
    for i, tile in enumerate(tiles):
        if tile is not None:
            rgba[i, :3] = torch.as_tensor(tile if tile.shape[-1] == 3 else tile[..., :1]).permute(2, 0, 1)
            rgba[i, 3] = 1.0
    grid = make_grid(rgba, nrow=ncols, padding=pad, pad_value=0.0)
    if len(rgba) > 1:  # make_grid also pads the outer border (a single image it returns as is): cut it off
        grid = grid[:, pad:grid.shape[1] - pad, pad:grid.shape[2] - pad]
    return grid.permute(1, 2, 0).numpy()


def show_images(images: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None, dataset: Any = None, *,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, ncols: int = 10,
                title: str | None = None, class_names: Sequence[str] | None = None, size: float = 0.8) -> Figure:
    """A grid of images drawn as one picture (fast for hundreds of images); with labels, each row
    is named by its class when it holds one class, else each image gets a caption."""
    pixels = to_display(images, dataset, mean, std)
    n = len(pixels)
    if n == 0:
        raise ValueError("show_images needs at least one image, got 0")
    require("ncols", ncols, Int(1))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, ax = plt.subplots(figsize=(size * ncols + 0.8, size * nrows + 0.3 + 0.3 * bool(title)))
    _draw_mosaic(ax, list(pixels), ncols)
    hard = _hard_labels(labels, n)
    if hard is not None:
        _label_tiles(ax, hard, ncols, pixels.shape[1:3], _class_names(class_names, dataset))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def compare_grid(real: torch.Tensor, synthetic: torch.Tensor, real_labels: torch.Tensor | Sequence[int],
                 synthetic_labels: torch.Tensor | Sequence[int], dataset: Any = None, *,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, per_class: int = 5,
                 classes: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                 title: str | None = None, size: float = 0.8) -> Figure:
    """Real images (left axes) next to synthetic ones (right axes), one row per class with
    `per_class` images each; a class with fewer images leaves its remaining places blank."""
    require("per_class", per_class, Int(1))
    sides = [(to_display(real, dataset, mean, std), _hard_labels(real_labels, len(real))),
             (to_display(synthetic, dataset, mean, std), _hard_labels(synthetic_labels, len(synthetic)))]
    classes = sorted(set(sides[0][1].tolist()) | set(sides[1][1].tolist())) if classes is None else list(classes)
    names = _class_names(class_names, dataset)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size * per_class + 1.4, size * len(classes) + 0.5 + 0.3 * bool(title)))
    for ax, (px, y), name in zip(axes, sides, ("real", "synthetic")):
        tiles: list[np.ndarray | None] = []
        for cls in classes:
            picked = list(px[y == cls][:per_class])
            tiles += picked + [None] * (per_class - len(picked))
        _draw_mosaic(ax, tiles, per_class)
        ax.set_title(name)
    _name_rows(axes[0], [_name(names, c) for c in classes], sides[0][0].shape[1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_bars(table: pd.DataFrame | Sequence[Mapping[str, Any]], *, label: str = "method", mean: str = "mean",
                  std: str = "std", title: str | None = None, ylabel: str = "test accuracy (%)",
                  reference: Mapping[str, float] | None = None) -> Figure:
    """Bar plot of mean accuracy per row of `table` with std error bars (and optional reference marks)."""
    import pandas as pd

    df = pd.DataFrame(list(table)) if not isinstance(table, pd.DataFrame) else table
    missing = [c for c in (label, mean, std) if c not in df.columns]
    if missing:
        raise ValueError(f"table has no column(s) {missing}; its columns: {list(df.columns)}")
    if df.empty:
        raise ValueError("accuracy_bars needs at least one row, got an empty table")
    fig, ax = plt.subplots(figsize=(1.2 + 1.0 * len(df), 3.2))
    x = np.arange(len(df))
    bars = ax.bar(x, df[mean], yerr=df[std], capsize=4, color="tab:blue", alpha=0.85)
    ax.bar_label(bars, labels=[f"{m:.1f}±{s:.1f}" for m, s in zip(df[mean], df[std])], fontsize=7, padding=2)
    for i, name in enumerate(df[label]):
        if reference and name in reference:
            ax.plot([i - 0.4, i + 0.4], [reference[name]] * 2, color="black", ls="--", lw=1)
    ax.set_xticks(x, [str(v) for v in df[label]])
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(100.0, float((df[mean] + df[std]).max()) * 1.1))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def loss_curve(history: Mapping[str, Sequence[float]] | Sequence[float], *, keys: Iterable[str] | None = None,
               x: Sequence[float] | None = None, title: str | None = None, xlabel: str = "iteration",
               logy: bool = False) -> Figure:
    """Loss (or any series) against iteration: a list of numbers, or a dict of name -> list
    (all list-valued entries, or just `keys`) drawn as one line each."""
    series = _series(history, keys)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in series.items():
        xs = list(x) if x is not None else list(range(len(values)))
        if len(xs) != len(values):
            raise ValueError(f"x has {len(xs)} values but series {name!r} has {len(values)}")
        ax.plot(xs, values, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss" if len(series) == 1 else "value")
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def group_histograms(groups: Mapping[str, Sequence[float] | np.ndarray], pairs: Sequence[Sequence[str]], *,
                     titles: Sequence[str] | None = None, xlabel: str = "value", bins: int = 30) -> Figure:
    """One panel per pair (or tuple) of groups: their values as overlaid density histograms (seaborn) on
    shared bins from 0 to the largest value, each labelled with its mean (e.g. gradient norms, 002 Fig. 1a)."""
    import seaborn as sns

    missing = sorted({name for pair in pairs for name in pair} - set(groups))
    if missing:
        raise ValueError(f"no group(s) {missing}; the groups are: {list(groups)}")
    if titles is not None and len(titles) != len(pairs):
        raise ValueError(f"{len(titles)} titles for {len(pairs)} panels; give one per panel or none")
    values = {name: np.asarray(v, dtype=float) for name, v in groups.items()}
    edges = np.linspace(0, max(float(v.max()) for v in values.values()), bins)
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 3.6), squeeze=False)
    for i, (ax, pair) in enumerate(zip(axes[0], pairs)):
        for name in pair:
            sns.histplot(x=values[name], bins=edges, stat="density", alpha=0.55, linewidth=0.5, ax=ax,
                         label=f"{name} (mean {values[name].mean():.2f})")
        ax.set(xlabel=xlabel, ylabel="density")
        ax.legend()
        if titles is not None:
            ax.set_title(titles[i])
    fig.tight_layout()
    return fig


def selection_points(coords: np.ndarray, labels: torch.Tensor | np.ndarray, selections: Mapping[str, torch.Tensor],
                     cls: int, step: int) -> dict[str, np.ndarray]:
    """The data of `selection_figure`: 2-D points of class `cls` ("class") and of each sampler's batch at `step`.

    coords (n, 2) and labels (n,) describe the clustered pool; selections[name] is (steps, K, B)
    indices into that pool, as `ddnb.analysis.sampler_trace` records them.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    steps = min(int(s.shape[0]) for s in selections.values())
    if not 0 <= cls <= int(labels.max()):
        raise ValueError(f"class {cls!r} out of range; allowed: 0..{int(labels.max())}")
    if not 0 <= step < steps:
        raise ValueError(f"step {step!r} out of range; allowed: 0..{steps - 1}")
    out = {"class": coords[labels == cls]}
    for name, sel in selections.items():
        out[name] = coords[sel[step, cls].cpu().numpy()]
    return out


def selection_figure(coords: np.ndarray, labels: torch.Tensor | np.ndarray, selections: Mapping[str, torch.Tensor],
                     cls: int, step: int, title: str = "") -> Figure:
    """Scatter of a class on the 2-D embedding with each sampler's batch at `step` marked (the widget's picture)."""
    pts = selection_points(coords, labels, selections, cls, step)
    names = [n for n in pts if n != "class"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.scatter(*pts["class"].T, s=6, c="lightgray", label=f"class {cls}")
        ax.scatter(*pts[name].T, s=28, marker="*" if name == "dream" else "o", c="crimson", label=f"{name} batch")
        ax.set_title(f"{name} batch, step {step}")
        ax.set_xticks([]), ax.set_yticks([])
        ax.legend(loc="best", fontsize=7)
    fig.suptitle(title or f"class {cls}: selected real batch on the 2-D embedding")
    fig.tight_layout()
    return fig


def embedding_panels(real_xy: np.ndarray, real_labels: np.ndarray,
                     syn: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> Figure:
    """One panel per synthetic set: real points coloured by class, that set's images as stars (002 Fig. 8)."""
    fig, axes = plt.subplots(1, len(syn), figsize=(4.6 * len(syn), 4.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (name, (xy, labels)) in zip(axes[0], syn.items()):
        ax.scatter(*real_xy.T, s=4, c=[cmap(int(c) % 10) for c in real_labels], alpha=0.35)
        ax.scatter(*xy.T, s=90, marker="*", c=[cmap(int(c) % 10) for c in labels], edgecolors="black",
                   linewidths=0.6)
        ax.set_title(name)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_png(fig: Figure, dpi: int = 120) -> bytes:
    """The figure rendered as PNG bytes (for files and image widgets)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, output_dir: str | os.PathLike, name: str, dpi: int = 120) -> Path:
    """Write the figure as output_dir/name.png atomically (a crash never leaves half a PNG); return the path."""
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file name like 'accuracy' or 'accuracy.png', got {name!r}")
    stem, ext = os.path.splitext(name)
    if ext not in ("", ".png"):
        raise ValueError(f"figures are saved as PNG; name {name!r} has extension {ext!r}, allowed: none or '.png'")
    return atomic_write_bytes(Path(output_dir) / f"{stem}.png", figure_png(fig, dpi))


def _as_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A detached float CPU tensor of shape (N,C,H,W)."""
    x = torch.as_tensor(images).detach().cpu().float()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"images must be (N,C,H,W) or (C,H,W), got shape {tuple(x.shape)}")
    return x


def _hard_labels(labels: Any, n: int) -> np.ndarray | None:
    """Class ids as a numpy array (argmax of soft labels), checked against the number of images."""
    if labels is None:
        return None
    y = torch.as_tensor(labels).detach().cpu()
    y = y.argmax(1) if y.dim() == 2 else y
    if y.dim() != 1 or len(y) != n:
        raise ValueError(f"labels must be (N,) class ids or (N,K) scores for N={n} images, got shape {tuple(y.shape)}")
    return y.long().numpy()


def _class_names(class_names: Sequence[str] | None, dataset: Any) -> Sequence[str] | None:
    """Explicit class names, else the dataset's, else none."""
    return class_names if class_names is not None else getattr(dataset, "classes", None)


def _name(names: Sequence[str] | None, cls: int) -> str:
    """A class's display name (its id when no names are known)."""
    return str(names[cls]) if names is not None and 0 <= cls < len(names) else str(int(cls))


def _draw_mosaic(ax: Any, tiles: list[np.ndarray | None], ncols: int) -> None:
    """Show tiles as one mosaic on `ax`, without ticks or frame."""
    ax.imshow(mosaic(tiles, ncols), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_frame_on(False)


def _name_rows(ax: Any, names: Sequence[str], tile_h: int, pad: int = 1) -> None:
    """Class names as tick labels at the middle of each mosaic row."""
    ax.set_yticks([r * (tile_h + pad) + (tile_h - 1) / 2 for r in range(len(names))], names, fontsize=8)
    ax.tick_params(axis="y", length=0)


def _label_tiles(ax: Any, labels: np.ndarray, ncols: int, tile_hw: tuple[int, int],
                 names: Sequence[str] | None, pad: int = 1) -> None:
    """Name each row by its class when every row holds a single class, else caption each tile."""
    rows = [labels[i:i + ncols] for i in range(0, len(labels), ncols)]
    if all((row == row[0]).all() for row in rows):
        _name_rows(ax, [_name(names, int(row[0])) for row in rows], tile_hw[0], pad)
        return
    h, w = tile_hw
    for i, cls in enumerate(labels):
        r, c = divmod(i, ncols)
        ax.text(c * (w + pad), r * (h + pad), _name(names, int(cls)), fontsize=6, va="top", ha="left",
                color="yellow", bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "lw": 0})


def _series(history: Any, keys: Iterable[str] | None) -> dict[str, list[float]]:
    """Name -> list of floats from a list or from a dict's list-valued entries."""
    if isinstance(history, Mapping):
        names = list(keys) if keys is not None else [k for k, v in history.items()
                                                      if isinstance(v, (list, tuple)) and v and _numbers(v)]
        missing = [k for k in names if k not in history]
        if missing:
            raise ValueError(f"history has no entry {missing}; it has: {list(history)}")
        series = {k: [float(v) for v in history[k]] for k in names}
    else:
        series = {"loss": [float(v) for v in history]}
    if not series or not any(series.values()):
        raise ValueError("loss_curve needs at least one non-empty series of numbers")
    return series


def _numbers(values: Sequence[Any]) -> bool:
    """True when every value is a real number (not a bool)."""
    return all(isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) for v in values)


def score_distribution(scores: Any, *, dataset: Any = None, class_names: Sequence[str] | None = None,
                       title: str | None = None) -> Figure:
    """Each class's difficulty-score distribution (`ddnb.scores.Scores`) as a seaborn violin with quartiles."""
    import pandas as pd
    import seaborn as sns

    names = _class_names(class_names, dataset)
    classes = range(scores.config["data"]["num_classes"])
    frame = pd.DataFrame({"class": [_name(names, int(c)) for c in scores.labels], "score": scores.values.numpy()})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(classes) + 2), 3.4))
    sns.violinplot(data=frame, x="class", y="score", order=[_name(names, c) for c in classes], cut=0,
                   inner="quartile", color="lightsteelblue", ax=ax)
    ax.set_ylabel(f"{scores.kind} ({'higher' if scores.higher_is_harder else 'lower'} is harder)")
    ax.set_title(title or f"{scores.kind} scores per class ({len(scores.values)} images)")
    fig.tight_layout()
    return fig


def score_extremes(scores: Any, dataset: Any, cls: int, n: int = 8, *, title: str | None = None) -> Figure:
    """A class's n easiest, n median and n hardest scored images (rows), each titled with its score."""
    from ddnb.scores import class_ranking
    from ddnb.settings import Int, require

    scores.check_dataset(dataset)
    require("cls", cls, Int(0, dataset.num_classes - 1))
    require("n", n, Int(1))
    ranking = class_ranking(scores, "easy")[cls]
    n = min(n, len(ranking))
    mid = (len(ranking) - n) // 2
    rows = {"easiest": ranking[:n], "median": ranking[mid:mid + n], "hardest": ranking[len(ranking) - n:].flip(0)}
    value = torch.full((len(dataset.x_train),), float("nan"), dtype=torch.float64)
    value[scores.indices] = scores.values
    fig, axes = plt.subplots(3, n, figsize=(1.0 * n + 1.0, 3.7), squeeze=False)
    for r, (name, idx) in enumerate(rows.items()):
        pixels = to_display(dataset.x_train[idx.to(dataset.x_train.device)].detach().cpu(), dataset)
        for j, ax in enumerate(axes[r]):
            gray = pixels.shape[-1] == 1
            ax.imshow(pixels[j][..., 0] if gray else pixels[j], cmap="gray" if gray else None)
            ax.set_title(f"{float(value[idx[j]]):.3g}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name)
    fig.suptitle(title or f"class {_name(_class_names(None, dataset), cls)}: {scores.kind} scores")
    fig.tight_layout()
    return fig


def window_figure(scores: Any, dataset: Any, cls: int, ipc: int, alpha: float, beta: float,
                  n_images: int = 8) -> Figure:
    """SelMatch's window on a class: its score histogram with the D_real and D_pre-distill parts, and their images."""
    from ddnb.methods.selection import class_window

    real, pre = class_window(scores, cls, ipc, alpha, beta)
    value = dict(zip(scores.indices.tolist(), scores.values.tolist()))
    members = scores.values[scores.labels == cls].numpy()
    fig = plt.figure(figsize=(max(6.0, 0.8 * n_images), 5.2))
    grid = fig.add_gridspec(3, n_images, height_ratios=[3, 1, 1])
    ax = fig.add_subplot(grid[0, :])
    bins = np.histogram_bin_edges(members, bins=30)
    ax.hist(members, bins=bins, color="lightgrey", label=f"class ({len(members)} images)")
    for idx, colour, name in ((real, "tab:red", "D_real (kept real)"), (pre, "tab:blue", "D_pre-distill")):
        if len(idx):
            ax.hist([value[int(i)] for i in idx], bins=bins, color=colour, alpha=0.8, label=f"{name}: {len(idx)}")
    ax.set(xlabel=f"{scores.kind} ({'higher' if scores.higher_is_harder else 'lower'} is harder)", ylabel="images",
           title=f"class {_name(_class_names(None, dataset), cls)}: window at beta={beta}, alpha={alpha}, IPC {ipc}")
    ax.legend(fontsize=8)
    for row, (idx, name) in enumerate(((real, "D_real"), (pre, "pre-distill")), start=1):
        shown = idx[:n_images]
        pixels = to_display(dataset.x_train[shown.to(dataset.x_train.device)].detach().cpu(), dataset) if len(shown) \
            else []
        for j in range(n_images):
            cell = fig.add_subplot(grid[row, j])
            cell.set_xticks([])
            cell.set_yticks([])
            if j < len(shown):
                gray = pixels.shape[-1] == 1
                cell.imshow(pixels[j][..., 0] if gray else pixels[j], cmap="gray" if gray else None)
            elif j:
                cell.set_axis_off()
            if j == 0:
                cell.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig
