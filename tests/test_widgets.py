"""The display layer: figures of ddnb.viz (axes, pixels, saved PNGs) and the plain functions and
panel of ddnb.widgets (class filtering, checkpoints, the browser's picture follows its controls)."""
from __future__ import annotations

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer

from ddnb import viz, widgets
from ddnb.synset import SyntheticSet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MEAN, STD = (0.5,), (0.25,)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _data(num_classes: int = 3) -> SimpleNamespace:
    """What viz and widgets read from a Dataset: class names and the pixel statistics."""
    return SimpleNamespace(classes=[f"class{c}" for c in range(num_classes)], mean=MEAN, std=STD)


def _synset(ipc: int = 2, num_classes: int = 3) -> SyntheticSet:
    """A tiny class-sorted synthetic set of 4x4 grey images; image i is filled with the value i."""
    n = ipc * num_classes
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    return SyntheticSet(images, labels, "digits", num_classes, (1, 4, 4))


# ------------------------------------------------------------------ viz

def test_to_display_inverts_the_normalization():
    x01 = torch.rand(5, 1, 3, 3)
    pixels = viz.to_display((x01 - MEAN[0]) / STD[0], _data())
    assert pixels.shape == (5, 3, 3, 1)
    np.testing.assert_allclose(pixels, x01.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    rgb = torch.rand(2, 3, 2, 2)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.4, 0.3)
    norm = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    np.testing.assert_allclose(viz.to_display(norm, mean=mean, std=std), rgb.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_to_display_without_statistics_stretches_each_image():
    pixels = viz.to_display(torch.tensor([[[[-3.0, 1.0]]], [[[10.0, 20.0]]]]))
    np.testing.assert_allclose(pixels[..., 0], [[[0.0, 1.0]], [[0.0, 1.0]]])
    with pytest.raises(ValueError, match="both mean and std"):
        viz.to_display(torch.zeros(1, 1, 2, 2), mean=(0.5,))
    with pytest.raises(ValueError, match="one value per channel"):
        viz.to_display(torch.zeros(1, 3, 2, 2), mean=(0.5,), std=(0.2,))


def test_mosaic_places_tiles_by_hand():
    a, b, c = np.full((2, 2, 1), 0.2), np.full((2, 2, 1), 0.4), np.full((2, 2, 1), 0.6)
    m = viz.mosaic([a, None, b, c], ncols=2, pad=1)
    assert m.shape == (5, 5, 4)
    assert (m[0:2, 0:2, :3] == np.float32(0.2)).all() and (m[0:2, 0:2, 3] == 1).all()
    assert (m[0:2, 3:5, 3] == 0).all()  # the None tile is transparent
    assert (m[3:5, 0:2, 0] == np.float32(0.4)).all() and (m[3:5, 3:5, 2] == np.float32(0.6)).all()
    assert (m[2, :, 3] == 0).all() and (m[:, 2, 3] == 0).all()  # padding is transparent
    with pytest.raises(ValueError, match="at least one image"):
        viz.mosaic([None], ncols=1)


def test_show_images_one_picture_with_class_names():
    x01 = torch.rand(6, 1, 4, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    fig = viz.show_images((x01 - MEAN[0]) / STD[0], labels, _data(), ncols=2, title="t")
    (ax,) = fig.axes
    shown = ax.images[0].get_array()
    np.testing.assert_allclose(shown[5:9, 5:9, 0], x01[3, 0].numpy(), atol=1e-6)  # row 1, column 1
    assert [t.get_text() for t in ax.get_yticklabels()] == ["class0", "class1", "class2"]  # one class per row
    mixed = torch.tensor([0, 1, 2, 0, 1, 2])
    (ax,) = viz.show_images(x01, mixed, _data(), ncols=4).axes
    assert [t.get_text() for t in ax.texts] == [f"class{c}" for c in mixed.tolist()]  # a caption per image
    soft = torch.nn.functional.one_hot(mixed, 3).float()
    assert [t.get_text() for t in viz.show_images(x01, soft, _data(), ncols=4).axes[0].texts] == \
        [f"class{c}" for c in mixed.tolist()]
    with pytest.raises(ValueError, match="labels must be"):
        viz.show_images(x01, labels[:3], _data())


def test_compare_grid_rows_per_class_blank_where_images_run_out():
    real, real_y = torch.randn(9, 1, 4, 4), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    syn, syn_y = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2])
    fig = viz.compare_grid(real, syn, real_y, syn_y, _data(), per_class=2)
    left, right = fig.axes
    assert (left.get_title(), right.get_title()) == ("real", "synthetic")
    real_alpha, syn_alpha = left.images[0].get_array()[..., 3], right.images[0].get_array()[..., 3]
    tile_opaque = [[bool(a[r * 5, c * 5]) for c in range(2)] for a in (real_alpha, syn_alpha) for r in range(3)]
    assert tile_opaque == [[True, True]] * 3 + [[True, False]] * 3  # synthetic: one image per class
    assert [t.get_text() for t in left.get_yticklabels()] == ["class0", "class1", "class2"]
    assert real_alpha.shape == (3 * 5 - 1, 2 * 5 - 1)
    only = viz.compare_grid(real, syn, real_y, syn_y, _data(), per_class=1, classes=[2])
    assert [t.get_text() for t in only.axes[0].get_yticklabels()] == ["class2"]


def test_accuracy_bars_heights_and_error_bars():
    table = [{"method": "random", "mean": 70.0, "std": 2.0}, {"method": "dm", "mean": 80.0, "std": 1.0}]
    fig = viz.accuracy_bars(table, title="acc")
    (ax,) = fig.axes
    assert [p.get_height() for p in ax.patches] == [70.0, 80.0]
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    (errorbar,) = bars.errorbar.lines[2]
    tops = [seg[1][1] for seg in errorbar.get_segments()]
    assert tops == [72.0, 81.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["random", "dm"]
    with pytest.raises(ValueError, match="no column"):
        viz.accuracy_bars([{"name": "x", "mean": 1.0, "std": 0.0}])


def test_loss_curve_lines():
    fig = viz.loss_curve([3.0, 2.0, 1.0])
    (line,) = fig.axes[0].lines
    assert list(line.get_ydata()) == [3.0, 2.0, 1.0]
    history = {"train_loss": [1.0, 0.5], "lr": [0.1, 0.1], "name": "x", "evals": [{"a": 1}]}
    assert len(viz.loss_curve(history).axes[0].lines) == 2
    assert len(viz.loss_curve(history, keys=["lr"]).axes[0].lines) == 1
    with pytest.raises(ValueError, match="has no entry"):
        viz.loss_curve(history, keys=["loss"])
    with pytest.raises(ValueError, match="x has 3 values"):
        viz.loss_curve([1.0, 2.0], x=[1, 2, 3])


def test_save_figure_writes_a_png_atomically(tmp_path):
    fig = viz.show_images(torch.randn(2, 1, 4, 4))
    path = viz.save_figure(fig, tmp_path / "new", "grid")
    assert path == tmp_path / "new" / "grid.png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert viz.save_figure(fig, tmp_path / "new", "grid.png") == path
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["grid.png"]  # no temp file left
    for bad in ("grid.pdf", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="figure"):
            viz.save_figure(fig, tmp_path, bad)


def test_selection_points_picks_the_batch_coordinates():
    coords = np.arange(20, dtype=float).reshape(10, 2)
    labels = torch.tensor([0] * 5 + [1] * 5)
    sel = {"dream": torch.tensor([[[0, 1], [5, 6]], [[2, 3], [7, 8]]]),
           "random": torch.zeros(2, 2, 2, dtype=torch.long)}
    pts = viz.selection_points(coords, labels, sel, cls=1, step=1)
    assert np.array_equal(pts["class"], coords[5:])
    assert np.array_equal(pts["dream"], coords[[7, 8]])
    with pytest.raises(ValueError, match="step"):
        viz.selection_points(coords, labels, sel, cls=1, step=2)
    assert widgets.selection_png(coords, labels, sel, cls=0, step=0).startswith(PNG_MAGIC)


def test_group_histograms_one_panel_per_pair_with_means():
    groups = {"a": np.array([1.0, 1.0, 3.0]), "b": np.array([2.0, 4.0]), "c": np.array([0.5])}
    fig = viz.group_histograms(groups, [("a", "b"), ("c",)], titles=["ab", "c"], xlabel="norm", bins=5)
    ab, c = fig.axes
    assert [t.get_text() for t in ab.get_legend().get_texts()] == ["a (mean 1.67)", "b (mean 3.00)"]
    assert (ab.get_title(), c.get_title(), ab.get_xlabel()) == ("ab", "c", "norm")
    bars = [p for p in ab.patches if p.get_height() > 0]
    assert sum(p.get_height() * p.get_width() for p in bars) == pytest.approx(2.0)  # two densities, area 1 each
    assert min(p.get_x() for p in ab.patches) == 0.0 and max(p.get_x() + p.get_width() for p in ab.patches) == 4.0
    with pytest.raises(ValueError, match="no group"):
        viz.group_histograms(groups, [("a", "z")])
    with pytest.raises(ValueError, match="titles"):
        viz.group_histograms(groups, [("a", "b")], titles=["x", "y"])


def test_embedding_panels_one_panel_per_set():
    real_xy, real_labels = np.random.default_rng(0).normal(size=(6, 2)), np.array([0, 0, 1, 1, 2, 2])
    syn = {"s1": (np.zeros((3, 2)), np.array([0, 1, 2])), "s2": (np.ones((3, 2)), np.array([0, 1, 2]))}
    fig = viz.embedding_panels(real_xy, real_labels, syn, title="t")
    assert [ax.get_title() for ax in fig.axes] == ["s1", "s2"]
    assert [len(c.get_offsets()) for c in fig.axes[0].collections] == [6, 3]


# ------------------------------------------------------------------ widgets: plain functions

def test_images_for_class_by_hand():
    images = torch.arange(4.0).view(4, 1, 1, 1)
    labels = torch.tensor([0, 1, 0, 2])
    assert widgets.images_for_class(images, labels, 0).flatten().tolist() == [0.0, 2.0]
    soft = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.0, 0.2, 0.8], [0.3, 0.6, 0.1]])
    assert widgets.images_for_class(images, soft, 1).flatten().tolist() == [0.0, 3.0]
    synset = _synset(ipc=2, num_classes=3)
    assert widgets.images_for_class(synset, None, 2)[:, 0, 0, 0].tolist() == [4.0, 5.0]
    assert len(widgets.images_for_class(images, labels, 1, num_classes=5)) == 1
    assert len(widgets.images_for_class(images, labels, 4, num_classes=5)) == 0  # a class with no images
    for bad in (3, -1, True):
        with pytest.raises(ValueError, match=r"class must be an int >= 0 and <= 2, got"):
            widgets.images_for_class(images, labels, bad)
    with pytest.raises(ValueError, match="labels are needed"):
        widgets.images_for_class(images, None, 0)


def test_checkpoint_frame_and_label():
    a, b = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert widgets.checkpoint_frame([a, b], 1) is b
    assert widgets.checkpoint_frame([(1, a), (8, b)], 0) is a
    assert widgets.checkpoint_label([(1, a), (8, b)], 1) == "iteration 8"
    assert widgets.checkpoint_label([a, b], 0) == "checkpoint 1/2"
    for bad in (2, -1, 1.0):
        with pytest.raises(ValueError, match=r"checkpoint index must be an int >= 0 and <= 1, got"):
            widgets.checkpoint_frame([a, b], bad)
    with pytest.raises(ValueError, match="no checkpoints"):
        widgets.checkpoint_frame([], 0)


def test_checkpoint_recorder_keeps_independent_copies():
    images = torch.zeros(2, 1, 2, 2, requires_grad=True)
    state = {"images": images}
    recorder = widgets.CheckpointRecorder()
    every5 = widgets.CheckpointRecorder(every=5)
    for it in range(20):
        with torch.no_grad():
            images.fill_(it + 1)
        recorder(it, state)
        every5(it, state)
    assert [i for i, _ in recorder.frames] == [1, 2, 4, 8, 16]
    assert [i for i, _ in every5.frames] == [5, 10, 15, 20]
    assert [float(x.max()) for _, x in recorder.frames] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert not recorder.frames[0][1].requires_grad
    with pytest.raises(ValueError, match="has no 'images'"):
        recorder(0, {"image": images})
    with pytest.raises(ValueError, match="every must be"):
        widgets.CheckpointRecorder(every=0)


def test_browser_png_shows_the_asked_class_and_checkpoint():
    synset = _synset()
    frames = [(1, torch.zeros_like(synset.images)), (2, synset.images * 2)]
    png = widgets.browser_png(synset, _data(), 1)
    assert png.startswith(PNG_MAGIC)
    assert png != widgets.browser_png(synset, _data(), 2)
    assert png != widgets.browser_png(synset, _data(), 1, frames, 0)
    unbalanced = SyntheticSet(synset.images, torch.tensor([0, 0, 0, 0, 2, 2]), "digits", 3, (1, 4, 4))
    assert widgets.browser_png(unbalanced, _data(), 1).startswith(PNG_MAGIC)  # a class without images


# ------------------------------------------------------------------ widgets: the panel

def test_synset_browser_picture_follows_its_controls():
    synset, data = _synset(), _data()
    frames = [(1, torch.zeros_like(synset.images)), (2, synset.images * 2)]
    panel = widgets.synset_browser(synset, data, frames)
    (pick, slider), image = panel.children[0].children, panel.children[1]
    assert [label for label, _ in pick.options] == data.classes
    assert (slider.min, slider.max, slider.value) == (0, 2, 2)
    assert image.value == widgets.browser_png(synset, data, 0)
    pick.value = 2
    assert image.value == widgets.browser_png(synset, data, 2)
    slider.value = 0
    assert image.value == widgets.browser_png(synset, data, 2, frames, 0)
    no_frames = widgets.synset_browser(synset, data)
    assert no_frames.children[0].children[1].layout.display == "none"


def test_selection_browser_picture_follows_its_controls():
    coords = np.arange(20, dtype=float).reshape(10, 2)
    labels = torch.tensor([0] * 5 + [1] * 5)
    sel = {"dream": torch.tensor([[[0, 1], [5, 6]], [[2, 3], [7, 8]]]),
           "random": torch.zeros(2, 2, 2, dtype=torch.long)}
    panel = widgets.selection_browser(coords, labels, sel, ["zero", "one"])
    (pick, slider), image = panel.children[0].children, panel.children[1]
    assert (slider.min, slider.max, slider.value) == (0, 1, 0)
    assert image.value == widgets.selection_png(coords, labels, sel, 0, 0, "zero")
    pick.value, slider.value = 1, 1
    assert image.value == widgets.selection_png(coords, labels, sel, 1, 1, "one")


def _window_scores():
    """Digits with forgetting scores 0..N-1 (a higher index is harder) over every training image."""
    from ddnb.data import load_dataset
    from ddnb.scores import Scores

    data = load_dataset("digits")
    return data, Scores.from_values(data, "forgetting", torch.arange(len(data.x_train), dtype=torch.float64))


def test_class_window_takes_the_classes_ranks():
    from ddnb.methods.selection import class_window

    data, scores = _window_scores()
    members = torch.nonzero(data.y_train.cpu() == 2).view(-1).flip(0)  # hardest first: highest index first
    real, pre = class_window(scores, 2, 10, 0.3, 0.5)
    assert real.tolist() == members[5:12].tolist() and pre.tolist() == members[12:15].tolist()
    with pytest.raises(ValueError, match="cls must be an int >= 0 and <= 9"):
        class_window(scores, 10, 10, 0.3, 0.5)


def test_window_figure_shows_the_window_parts_and_their_images():
    data, scores = _window_scores()
    fig = viz.window_figure(scores, data, 2, 10, 0.3, 0.5, n_images=4)
    hist = fig.axes[0]
    counts = [sum(p.get_height() for p in c) for c in hist.containers if isinstance(c, BarContainer)]
    assert counts == [int((data.y_train == 2).sum()), 7, 3]
    shown = [ax for ax in fig.axes[1:] if ax.images]
    assert len(fig.axes) == 1 + 2 * 4 and len(shown) == 4 + 3


def test_window_browser_picture_follows_its_controls():
    data, scores = _window_scores()
    panel = widgets.window_browser(scores, data, 10, 0.3, [0.0, 0.5, 1.0])
    (pick, slider), image = panel.children[0].children, panel.children[1]
    assert image.value == widgets.window_png(scores, data, 0, 10, 0.3, 0.0)
    pick.value, slider.value = 3, 1.0
    assert image.value == widgets.window_png(scores, data, 3, 10, 0.3, 1.0)
    assert bytes(image.value).startswith(PNG_MAGIC)
