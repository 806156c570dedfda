"""The shared distillation loop: exact resume, NaN stop, checkpoints, history, init helpers."""
from __future__ import annotations

import json

import pytest
import torch

from ddnb.methods.base import build_synset, init_synthetic, real_init_indices
from ddnb.methods.loop import History, RunOptions, latest_checkpoint, load_checkpoint, run_loop, seed_iteration


def _toy_run(n_iters: int, out_dir=None, resume: bool = False, seed: int = 3, identity=None, **kw):
    """A tiny 'distillation': SGD+momentum on images toward random targets drawn per iteration."""
    images = torch.zeros(4, 1, 3, 3, requires_grad=True)
    opt = torch.optim.SGD([images], lr=0.3, momentum=0.5)
    lr = torch.tensor(0.3)
    state = {"images": images, "opt": opt, "lr": lr}

    def step(it: int) -> float:
        g = seed_iteration(seed, it)
        target = torch.randn(images.shape, generator=g) + torch.rand(()).item()  # global RNG used too
        loss = ((images - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    hist = run_loop(step, state, method="toy", settings={"seed": seed}, n_iters=n_iters,
                    run=RunOptions(out_dir=out_dir, resume=resume, progress=False, **kw), identity=identity)
    return images, hist


def test_resume_is_exact(tmp_path):
    full, hist_full = _toy_run(6)
    _toy_run(3, out_dir=tmp_path, checkpoint_every=1)  # 'crash' after 3 iterations
    resumed, hist = _toy_run(6, out_dir=tmp_path, resume=True, checkpoint_every=1)
    assert torch.equal(full, resumed)
    assert hist.loss == hist_full.loss and len(hist.seconds) == 6
    assert [p.rsplit("_", 1)[1] for p in hist.checkpoints] == [f"{i:08d}.pt" for i in range(1, 7)]


def test_resume_refuses_other_settings_and_fresh_run_refuses_used_folder(tmp_path):
    _toy_run(2, out_dir=tmp_path, seed=3)
    with pytest.raises(ValueError, match="cannot resume"):
        _toy_run(4, out_dir=tmp_path, resume=True, seed=4)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _toy_run(4, out_dir=tmp_path, seed=3)


def test_checkpoint_loads_weights_only_and_history_json(tmp_path):
    images, hist = _toy_run(5, out_dir=tmp_path, checkpoint_every=2)
    path = latest_checkpoint(tmp_path)
    assert path.name == "ckpt_00000005.pt" and [int(p[-11:-3]) for p in hist.checkpoints] == [2, 4, 5]
    ckpt = load_checkpoint(path)  # torch.load(weights_only=True) inside
    assert torch.equal(ckpt["state"]["images"], images.detach())
    assert "momentum_buffer" in ckpt["state"]["opt"]["state"][0]
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert on_disk == hist.to_dict() and History.from_dict(on_disk) == hist


def test_nan_stops_with_iteration_and_last_checkpoint(tmp_path):
    x = torch.zeros(2)
    state = {"x": x}

    def step(it: int) -> float:
        return float("nan") if it == 3 else 1.0

    with pytest.raises(FloatingPointError, match=r"iteration 3; last good checkpoint: .*ckpt_00000002\.pt"):
        run_loop(step, state, method="toy", settings={}, n_iters=6,
                 run=RunOptions(out_dir=tmp_path, checkpoint_every=2, progress=False))
    with pytest.raises(FloatingPointError, match="inf at iteration 0; last good checkpoint: none"):
        run_loop(lambda it: float("inf"), {}, method="toy", settings={}, n_iters=2, run=RunOptions(progress=False))


def test_evals_and_callback():
    seen = []
    hist = run_loop(lambda it: float(it), {"x": torch.ones(1)}, method="toy", settings={}, n_iters=5,
                    run=RunOptions(progress=False, eval_every=2, callback=lambda it, s: seen.append(it)),
                    eval_fn=lambda s: {"mean": 50.0, "std": 1.0, "per_seed": [49, 51]})
    assert seen == [0, 1, 2, 3, 4] and hist.loss == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [e["iteration"] for e in hist.evals] == [2, 4, 5] and hist.evals[0]["per_seed"] == [49.0, 51.0]


def test_bad_loop_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_iters"):
        run_loop(lambda it: 0.0, {}, method="t", settings={}, n_iters=-1, run=RunOptions())
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        run_loop(lambda it: 0.0, {}, method="t", settings={}, n_iters=1, run=RunOptions(resume=True))
    with pytest.raises(TypeError, match="state\\['bad'\\]"):
        run_loop(lambda it: 0.0, {"bad": object()}, method="t", settings={}, n_iters=1,
                 run=RunOptions(out_dir=tmp_path, checkpoint_every=1, progress=False))


class _Toy:
    """Minimal dataset: 3 classes of 1x4x4 images whose pixels equal the training index."""

    name, num_classes, image_shape = "toy", 3, (1, 4, 4)

    def __init__(self):
        self.y_train = torch.tensor([0, 1, 2] * 10)
        self.x_train = torch.arange(30.0).reshape(30, 1, 1, 1).expand(30, 1, 4, 4).clone()

    def class_indices(self):
        return [torch.nonzero(self.y_train == c).flatten() for c in range(3)]


def test_real_init_balanced_and_seeded():
    data = _Toy()
    idx = real_init_indices(data, 4, seed=1)
    assert torch.equal(data.y_train[idx], torch.tensor([0] * 4 + [1] * 4 + [2] * 4))
    assert len(set(idx.tolist())) == 12 and torch.equal(idx, real_init_indices(data, 4, seed=1))
    images, labels = init_synthetic(data, 4, seed=1)
    assert torch.equal(images[:, 0, 0, 0], idx.float()) and torch.equal(labels, data.y_train[idx])
    with pytest.raises(ValueError, match="needs 44 real images per class"):
        init_synthetic(data, 11, seed=0, factor=2)
    with pytest.raises(ValueError, match="init must be"):
        init_synthetic(data, 1, seed=0, init="zeros")


def test_factored_init_decodes_to_real_images():
    from ddnb.augment import factor_decode

    data = _Toy()
    images, labels = init_synthetic(data, 2, seed=0, factor=2)
    assert images.shape == (6, 1, 4, 4) and torch.equal(labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    tiles = factor_decode(images, 2, 4)[:, 0, 0, 0]  # constant images survive down/up-sampling exactly
    idx = real_init_indices(data, 8, seed=0).float()
    for n in range(6):  # stored image n holds the 4 real images of its class block, tile-major
        c, k = divmod(n, 2)
        assert torch.equal(tiles[n::6], idx[c * 8 + k * 4:c * 8 + k * 4 + 4])


def test_build_synset_provenance():
    from ddnb.synset import SyntheticSet

    data = _Toy()
    images, labels = init_synthetic(data, 1, seed=0)
    s = build_synset(images.requires_grad_(), labels, data, method="toy", settings={"lr": 1.0}, seed=7,
                     budget="smoke")
    assert isinstance(s, SyntheticSet) and not s.images.requires_grad
    assert {k: s.provenance[k] for k in ("method", "params", "seed", "budget")} == {
        "method": "toy", "params": {"lr": 1.0}, "seed": 7, "budget": "smoke"}


@pytest.mark.parametrize("env, expected", [
    ({}, ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, ["MALLOC_TRIM_THRESHOLD_"]),  # the user's own choice wins
    ({"DDNB_MALLOC_TUNE": "0"}, []),
])
def test_malloc_tuning_respects_environment(env, expected):
    import os
    import subprocess
    import sys

    from ddnb.alloc import _glibc

    if _glibc() is None:
        expected = []  # off glibc tuning is a no-op
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DDNB_MALLOC_TUNE"}
    out = subprocess.run([sys.executable, "-c", "import ddnb.alloc as a; print(sorted(a.tune_malloc()))"],
                         env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)
    # `import ddnb` alone applies it (evaluation-only code never imports the distillation loop)
    code = "import sys, ddnb; print(sorted(sys.modules['ddnb.alloc']._applied))"
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


# ---------------------------------------------------------------- checkpoints under faults

def _damage(path, how: str, images) -> None:
    """Damage a checkpoint file: flip one byte of its images, truncate it to half, or empty it."""
    data = bytearray(path.read_bytes())
    if how == "flip":
        at = bytes(data).index(images.detach().numpy().tobytes()) + 5  # inside the stored images
        data[at] ^= 0x40
    elif how == "truncate":
        data = data[:len(data) // 2]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how, why", [("flip", "checksum"), ("truncate", "truncated"), ("empty", "empty")])
def test_damaged_newest_checkpoint_is_skipped_and_named(tmp_path, caplog, how, why):
    full, _ = _toy_run(6)
    images, _ = _toy_run(4, out_dir=tmp_path, checkpoint_every=2)  # ckpt 2 and 4; 'crash' after 4
    _damage(tmp_path / "ckpt_00000004.pt", how, images)
    with caplog.at_level("WARNING", logger="ddnb.methods.loop"):
        resumed, hist = _toy_run(6, out_dir=tmp_path, resume=True, checkpoint_every=2)
    assert torch.equal(full, resumed)  # resumed from ckpt 2, not from the damaged ckpt 4
    skipped = [r.getMessage() for r in caplog.records if "ckpt_00000004.pt" in r.getMessage()]
    assert len(skipped) == 1 and why in skipped[0] and "ckpt_00000002.pt" in skipped[0]
    assert "\n" not in skipped[0] and len(hist.loss) == 6


def test_flipped_byte_fails_load_checkpoint(tmp_path):
    images, _ = _toy_run(2, out_dir=tmp_path, checkpoint_every=2)
    path = tmp_path / "ckpt_00000002.pt"
    _damage(path, "flip", images)
    with pytest.raises(ValueError, match=r"ckpt_00000002\.pt fails its checksum"):
        load_checkpoint(path)


def test_no_intact_checkpoint_is_a_one_line_error_naming_each(tmp_path):
    images, _ = _toy_run(4, out_dir=tmp_path, checkpoint_every=2)
    _damage(tmp_path / "ckpt_00000004.pt", "empty", images)
    _damage(tmp_path / "ckpt_00000002.pt", "truncate", images)
    with pytest.raises(ValueError, match=r"no intact checkpoint.*ckpt_00000004\.pt is empty.*ckpt_00000002\.pt is "
                                         r"truncated") as info:
        _toy_run(6, out_dir=tmp_path, resume=True)
    assert "\n" not in str(info.value)


_IDENTITY = {"dataset": "digits", "ipc": 2, "seed": 0, "budget": "smoke"}


@pytest.mark.parametrize("change, named", [
    ({"seed": 7}, "seed (checkpoint 0, this run 7)"),
    ({"ipc": 3, "dataset": "fashion_mnist"}, "dataset ('digits' in the checkpoint"),
    ({"budget": "cpu"}, "budget"),
])
def test_resume_with_another_identity_names_the_keys(tmp_path, change, named):
    _toy_run(2, out_dir=tmp_path, identity=_IDENTITY)
    with pytest.raises(ValueError, match="cannot resume") as info:
        _toy_run(4, out_dir=tmp_path, resume=True, identity={**_IDENTITY, **change})
    assert all(key in str(info.value) for key in change) and named.split(" (")[0] in str(info.value)
    resumed, hist = _toy_run(4, out_dir=tmp_path, resume=True, identity=dict(_IDENTITY))  # same identity: fine
    assert len(hist.loss) == 4


def test_resume_names_a_differing_setting_and_a_state_shape(tmp_path):
    _toy_run(2, out_dir=tmp_path, seed=3)
    with pytest.raises(ValueError, match=r"cannot resume.*settings\.seed \(checkpoint 3, this run 4\)"):
        _toy_run(4, out_dir=tmp_path, resume=True, seed=4)
    state = {"images": torch.zeros(5, 1, 3, 3), "opt": torch.optim.SGD([torch.zeros(1, requires_grad=True)]),
             "lr": torch.tensor(0.3)}
    with pytest.raises(ValueError, match=r"state\['images'\] has shape \(4, 1, 3, 3\) in .*ckpt_00000002\.pt "
                                         r"but \(5, 1, 3, 3\) in this run"):
        run_loop(lambda it: 0.0, state, method="toy", settings={"seed": 3}, n_iters=4,
                 run=RunOptions(out_dir=tmp_path, resume=True, progress=False))


class _RunsCode:
    """A pickled object whose unpickling would create the file `marker` (a code-executing reduce)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoint_holding_code_is_refused_in_one_line(tmp_path):
    import io

    from ddnb.methods import loop

    _toy_run(2, out_dir=tmp_path, checkpoint_every=2)
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": loop.CHECKPOINT_FORMAT, "iteration": 2, "state": {"x": _RunsCode(marker)}}, buf)
    path = tmp_path / "ckpt_00000002.pt"
    path.write_bytes(loop._frame_checkpoint(buf.getvalue()))  # a valid checksum: only the content is hostile
    with pytest.raises(ValueError) as info:
        _toy_run(4, out_dir=tmp_path, resume=True)
    msg = str(info.value)
    assert "ckpt_00000002.pt holds code or objects that are not plain tensors and was not loaded" in msg
    assert "\n" not in msg and "weights_only" not in msg and not marker.exists()
    path.write_bytes(buf.getvalue())  # the same content as a bare torch.save file (format 1): not even unpickled
    with pytest.raises(ValueError, match=r"ckpt_00000002\.pt is a checkpoint of an older ddnb"):
        _toy_run(4, out_dir=tmp_path, resume=True)
    assert not marker.exists()


def test_pixel_unit_step_equals_an_sgd_step_on_01_pixels():
    """SGD on normalized images with the 1/std^2 hook == SGD on [0, 1] pixels (normalize, step, map back)."""
    from types import SimpleNamespace

    from ddnb.methods.base import pixel_unit_hook

    mean = torch.tensor([0.3, 0.5, 0.1], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.35, 0.6], dtype=torch.float64).view(1, 3, 1, 1)
    data = SimpleNamespace(std=(0.2, 0.35, 0.6))
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)

    def loss_of(x_norm):  # any loss of what the network sees (normalized pixels)
        return (torch.tanh(x_norm) * target).sum() + 0.5 * (x_norm.mean((2, 3)) ** 2).sum()

    ref = x01.clone().requires_grad_(True)  # the reference optimizes [0, 1] pixels
    ref_opt = torch.optim.SGD([ref], lr=0.01, momentum=0.5)
    ours = ((x01 - mean) / std).requires_grad_(True)  # ddnb optimizes normalized pixels
    ours.register_hook(pixel_unit_hook(data, torch.device("cpu")))
    opt = torch.optim.SGD([ours], lr=0.01, momentum=0.5)
    for _ in range(3):
        ref_opt.zero_grad()
        loss_of((ref - mean) / std).backward()
        ref_opt.step()
        opt.zero_grad()
        loss_of(ours).backward()
        opt.step()
    torch.testing.assert_close(ours.detach() * std + mean, ref.detach())  # mapped back to [0, 1] units
    moved = (ref.detach() - x01).abs().max()
    assert moved > 1e-3  # the steps did something
