"""Figures of curriculum selection (CCFS, 000 Fig. 4) from the per-phase records a run keeps
(`history.records` / provenance "phases"): filter accuracy per phase, the difficulty of each phase's
selections, median-difficulty images per phase, and one phase on its class's difficulty histogram
(the picture of `phase_browser`, a slider over phases)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ddnb import viz
from ddnb.viz import plt


def phase_accuracy(records: Mapping[str, Sequence[Mapping[str, Any]]], *, title: str | None = None) -> Figure:
    """Fig. 4a: the filter's accuracy on the training (scored) images and the test set, per phase, per run."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for name, recs in records.items():
        phases = [r["phase"] for r in recs]
        ax.plot(phases, [r["filter_train_acc"] for r in recs], "o-", label=f"{name}: train")
        ax.plot(phases, [r["filter_test_acc"] for r in recs], "s--", label=f"{name}: test")
    ax.set(xlabel="curriculum phase", ylabel="filter accuracy (%)", title=title or "Fig. 4a: filter accuracy per phase")
    ax.set_xticks(sorted({r["phase"] for recs in records.values() for r in recs}))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def phase_frame(records: Sequence[Mapping[str, Any]], **columns: Any) -> pd.DataFrame:
    """One row per selected image (phase, training index, score), plus constant `columns` (e.g. ipc=50)."""
    rows = [{"phase": r["phase"], "index": i, "score": s, **columns}
            for r in records for i, s in zip(r["indices"], r["scores"])]
    return pd.DataFrame(rows)


def phase_difficulty(frame: pd.DataFrame, *, score: str = "forgetting", hue: str = "ipc",
                     title: str | None = None) -> Figure:
    """Fig. 4b: the score distribution of each phase's selected images (seaborn violins), one colour per `hue`."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.violinplot(data=frame, x="phase", y="score", hue=hue, cut=0, inner="quartile", ax=ax)
    ax.set(xlabel="curriculum phase", ylabel=f"{score} score of the selected images",
           title=title or "Fig. 4b: difficulty of the selected images per phase")
    fig.tight_layout()
    return fig


def median_images(records: Sequence[Mapping[str, Any]], labels: torch.Tensor, classes: Sequence[int],
                  n: int = 3) -> dict[tuple[int, int], list[int]]:
    """Per (class, phase): the n selected images of median score (training indices, easiest first)."""
    out = {}
    for c in classes:
        for r in records:
            pairs = sorted((s, i) for i, s in zip(r["indices"], r["scores"]) if int(labels[i]) == c)
            mid = max(0, (len(pairs) - n) // 2)
            out[(c, r["phase"])] = [i for _, i in pairs[mid:mid + n]]
    return out


def phase_images(records: Sequence[Mapping[str, Any]], dataset: Any, classes: Sequence[int], n: int = 3, *,
                 title: str | None = None) -> Figure:
    """Fig. 4c: rows are classes, column blocks phases; each block the n selected images of median score."""
    picks = median_images(records, dataset.y_train.cpu(), classes, n)
    phases = [r["phase"] for r in records]
    size = (0.9 * n * len(phases) + 1, 1.0 * len(classes) + 0.8)
    fig, axes = plt.subplots(len(classes), len(phases) * n, figsize=size,
                             squeeze=False)
    for row, c in enumerate(classes):
        for col, p in enumerate(phases):
            idx = picks[(c, p)]
            pixels = viz.to_display(dataset.x_train[torch.tensor(idx, dtype=torch.long)].cpu(), dataset) if idx else []
            for k in range(n):
                ax = axes[row, col * n + k]
                ax.set_xticks([])
                ax.set_yticks([])
                if k < len(idx):
                    gray = pixels.shape[-1] == 1
                    ax.imshow(pixels[k][..., 0] if gray else pixels[k], cmap="gray" if gray else None)
                if row == 0 and k == 0:
                    ax.set_title(f"phase {p}", fontsize=9, loc="left")
            axes[row, 0].set_ylabel(dataset.classes[c], fontsize=8)
    fig.suptitle(title or "Fig. 4c: selected images of median difficulty per phase")
    fig.tight_layout()
    return fig


def phase_on_histogram(class_scores: np.ndarray, records: Sequence[Mapping[str, Any]], labels: torch.Tensor,
                       cls: int, phase: int, dataset: Any, *, score: str = "score", n_images: int = 8) -> Figure:
    """One phase of one class: the class's score histogram with that phase's selections marked, and their images."""
    rec = next(r for r in records if r["phase"] == phase)
    chosen = [(s, i) for i, s in zip(rec["indices"], rec["scores"]) if int(labels[i]) == cls]
    fig = plt.figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot(2, 1, 1)
    ax.hist(class_scores, bins=30, color="lightgray", label="all scored images of the class")
    for k, (s, _) in enumerate(chosen):
        ax.axvline(s, color="crimson", alpha=0.7, label=f"selected in phase {phase}" if k == 0 else None)
    ax.set(xlabel=score, ylabel="images", title=f"{dataset.classes[cls]}: phase {phase} ({len(chosen)} selected)")
    ax.legend(fontsize=8)
    shown = sorted(chosen)[:n_images]
    if shown:
        pixels = viz.to_display(dataset.x_train[torch.tensor([i for _, i in shown])].cpu(), dataset)
        for k, (s, _) in enumerate(shown):
            sub = fig.add_subplot(2, n_images, n_images + k + 1)
            gray = pixels.shape[-1] == 1
            sub.imshow(pixels[k][..., 0] if gray else pixels[k], cmap="gray" if gray else None)
            sub.set_title(f"{s:.3g}", fontsize=8)
            sub.set_xticks([])
            sub.set_yticks([])
    fig.tight_layout()
    return fig


def phase_png(scores: Any, records: Sequence[Mapping[str, Any]], dataset: Any, cls: int, phase: int) -> bytes:
    """PNG bytes of `phase_on_histogram` for a class of pre-computed `scores` (the picture of `phase_browser`)."""
    values = scores.values[scores.labels == cls].numpy()
    fig = phase_on_histogram(values, records, dataset.y_train.cpu(), cls, phase, dataset, score=scores.kind)
    try:
        return viz.figure_png(fig, dpi=100)
    finally:
        plt.close(fig)


def phase_browser(scores: Any, records: Sequence[Mapping[str, Any]], dataset: Any) -> Any:
    """A panel: class dropdown and phase slider; the picture (`phase_png`) shows that phase's selections."""
    import ipywidgets as w

    pick = w.Dropdown(options=[(n, i) for i, n in enumerate(dataset.classes)], value=0, description="class")
    slider = w.IntSlider(value=1, min=1, max=len(records), description="phase", continuous_update=False)
    image = w.Image(format="png")

    def redraw(_change: Any = None) -> None:
        image.value = phase_png(scores, records, dataset, pick.value, slider.value)

    pick.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([pick, slider]), image])
