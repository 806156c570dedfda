"""ipywidgets panels over plain functions: everything a panel shows is computed by a function
that tests (and scripts) can call without a browser.

`CheckpointRecorder` is a distillation `callback` that keeps copies of the synthetic images as
they evolve; `synset_browser` flips through a synthetic set by class and over those checkpoints;
`selection_browser` steps through the real batches each sampler picked (`ddnb.analysis.sampler_trace`);
`window_browser` slides SelMatch's window (beta) over a class's difficulty histogram.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from ddnb import viz
from ddnb.settings import Int, require

Checkpoint = Tensor | tuple[int, Tensor]


class CheckpointRecorder:
    """A `callback(it, state)` for `ddnb.distill` that keeps CPU copies of `state[key]`.

    every=None keeps the images after iterations 1, 2, 4, 8, ... (distillation moves fastest
    early); an int keeps them after every `every` iterations. `frames` holds (iteration, images).
    """

    def __init__(self, every: int | None = None, key: str = "images") -> None:
        require("every", every, Int(1, optional=True))  # None: checkpoints at powers of two
        self.every, self.key = every, key
        self.frames: list[tuple[int, Tensor]] = []

    def wants(self, done: int) -> bool:
        """Whether the images after `done` completed iterations are kept."""
        return done % self.every == 0 if self.every else done & (done - 1) == 0

    def __call__(self, it: int, state: dict[str, Any]) -> None:
        """Keep a copy of state[key] after iteration `it` when `wants(it + 1)`."""
        if self.key not in state:
            raise ValueError(f"distillation state has no {self.key!r}; it has: {sorted(state)}")
        if self.wants(it + 1):
            self.frames.append((it + 1, state[self.key].detach().cpu().clone()))


def images_for_class(synset_or_images: Any, labels: Tensor | None, cls: int,
                     num_classes: int | None = None) -> Tensor:
    """The images of class `cls` (stored order), from a SyntheticSet or from images + labels
    (hard class ids, or soft labels whose argmax is the class)."""
    if hasattr(synset_or_images, "images"):
        images = synset_or_images.images
        labels = synset_or_images.labels if labels is None else labels
        num_classes = num_classes or synset_or_images.num_classes
    elif labels is None:
        raise ValueError("labels are needed when images are given as a tensor (or pass a SyntheticSet)")
    else:
        images = synset_or_images
    y = labels.argmax(1) if labels.dim() == 2 else labels
    if len(y) != len(images):
        raise ValueError(f"{len(y)} labels for {len(images)} images; they must match")
    k = num_classes or (labels.shape[1] if labels.dim() == 2 else int(y.max()) + 1 if len(y) else 0)
    require("class", cls, Int(0, k - 1))
    return images[(y == cls).to(images.device)]


def checkpoint_frame(checkpoints: Sequence[Checkpoint], idx: int) -> Tensor:
    """The images of checkpoint number `idx` (items are image tensors or (iteration, images))."""
    item = checkpoints[_check_index(checkpoints, idx)]
    return item[1] if isinstance(item, tuple) else item


def checkpoint_label(checkpoints: Sequence[Checkpoint], idx: int) -> str:
    """A short caption for checkpoint `idx`: its iteration when known, else its position."""
    item = checkpoints[_check_index(checkpoints, idx)]
    return f"iteration {item[0]}" if isinstance(item, tuple) else f"checkpoint {idx + 1}/{len(checkpoints)}"


def browser_png(synset: Any, dataset: Any, cls: int, checkpoints: Sequence[Checkpoint] | None = None,
                idx: int | None = None, ncols: int = 10) -> bytes:
    """PNG of one class of the synthetic set, at checkpoint `idx` (None: the final images)."""
    images = synset.images if idx is None else checkpoint_frame(checkpoints or [], idx)
    picked = images_for_class(images, synset.labels, cls, synset.num_classes)
    when = "final" if idx is None else checkpoint_label(checkpoints or [], idx)
    name = dataset.classes[cls] if dataset is not None else str(cls)
    title = f"{name}: {len(picked)} images ({when})"
    fig = viz.show_images(picked, None, dataset, ncols=ncols, title=title) if len(picked) else _empty(title)
    try:
        return viz.figure_png(fig, dpi=100)
    finally:
        plt.close(fig)


def synset_browser(synset: Any, dataset: Any, checkpoints: Sequence[Checkpoint] | None = None,
                   ncols: int = 10) -> Any:
    """A panel: a class dropdown and, with checkpoints, a slider over distillation checkpoints
    (the last position shows the final set); the picture is `browser_png`."""
    import ipywidgets as w

    names = list(dataset.classes) if dataset is not None else [str(c) for c in range(synset.num_classes)]
    pick = w.Dropdown(options=[(n, i) for i, n in enumerate(names)], value=0, description="class")
    frames = list(checkpoints or [])
    slider = w.IntSlider(value=len(frames), min=0, max=len(frames), description="checkpoint",
                         continuous_update=False, layout=w.Layout(display="flex" if frames else "none"))
    image = w.Image(format="png")

    def redraw(_change: Any = None) -> None:
        idx = None if slider.value == len(frames) else slider.value
        image.value = browser_png(synset, dataset, pick.value, frames, idx, ncols)

    pick.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([pick, slider]), image])


def selection_png(coords: np.ndarray, labels: Tensor | np.ndarray, selections: Mapping[str, Tensor], cls: int,
                  step: int, class_name: str | None = None) -> bytes:
    """PNG bytes of `viz.selection_figure` (the picture of `selection_browser`; also what tests can check)."""
    title = f"{class_name or f'class {cls}'}: selected real batch at step {step}, on the 2-D embedding"
    fig = viz.selection_figure(coords, labels, selections, cls, step, title=title)
    try:
        return viz.figure_png(fig, dpi=100)
    finally:
        plt.close(fig)


def selection_browser(coords: np.ndarray, labels: Tensor | np.ndarray, selections: Mapping[str, Tensor],
                      class_names: list[str]) -> Any:
    """A panel: class dropdown and step slider; the picture (`selection_png`) marks each sampler's batch."""
    import ipywidgets as w

    steps = min(int(s.shape[0]) for s in selections.values())
    pick = w.Dropdown(options=[(n, i) for i, n in enumerate(class_names)], value=0, description="class")
    slider = w.IntSlider(value=0, min=0, max=steps - 1, description="step", continuous_update=False)
    image = w.Image(format="png")

    def redraw(_change: Any = None) -> None:
        image.value = selection_png(coords, labels, selections, pick.value, slider.value, class_names[pick.value])

    pick.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([pick, slider]), image])


def window_png(scores: Any, dataset: Any, cls: int, ipc: int, alpha: float, beta: float) -> bytes:
    """PNG bytes of `viz.window_figure` (the picture of `window_browser`; also what tests can check)."""
    fig = viz.window_figure(scores, dataset, cls, ipc, alpha, beta)
    try:
        return viz.figure_png(fig, dpi=100)
    finally:
        plt.close(fig)


def window_browser(scores: Any, dataset: Any, ipc: int, alpha: float, betas: Sequence[float]) -> Any:
    """A panel: class dropdown and beta slider; the picture (`window_png`) shows SelMatch's window on the class."""
    import ipywidgets as w

    pick = w.Dropdown(options=[(n, i) for i, n in enumerate(dataset.classes)], value=0, description="class")
    slider = w.SelectionSlider(options=list(betas), value=betas[0], description="beta", continuous_update=False)
    image = w.Image(format="png")

    def redraw(_change: Any = None) -> None:
        image.value = window_png(scores, dataset, pick.value, ipc, alpha, slider.value)

    pick.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([pick, slider]), image])


def _empty(title: str) -> Any:
    """A small blank figure carrying only a title (a class without images)."""
    fig, ax = plt.subplots(figsize=(3, 0.6))
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def _check_index(checkpoints: Sequence[Checkpoint], idx: int) -> int:
    """`idx` when it is a valid position in `checkpoints`, else ValueError."""
    if not checkpoints:
        raise ValueError("no checkpoints were recorded (pass a CheckpointRecorder as the distill callback)")
    require("checkpoint index", idx, Int(0, len(checkpoints) - 1))
    return idx
