"""experts.py: trajectories (init + one snapshot per epoch), cache hit without training, cache keys,
resuming with more experts, and load_params."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import ddnb.experts as experts
from ddnb.data import load_dataset
from ddnb.experts import cache_key, expert_config, flatten_params, load_params, train_experts
from ddnb.models import get_model

SMALL = dict(arch="mlp", epochs=2, batch_size=256, dsa=True, model_kw={"hidden": 16}, progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_trajectory_starts_at_the_seeded_init_and_has_one_entry_per_epoch(digits, tmp_path):
    (traj,) = train_experts(digits, n=1, seed=3, cache_dir=tmp_path, **SMALL)
    assert len(traj) == 3
    torch.manual_seed(3)
    init = get_model("mlp", 1, 10, 8, hidden=16)
    assert torch.equal(traj[0], flatten_params(init))
    assert not torch.equal(traj[1], traj[0]) and not torch.equal(traj[2], traj[1])


def test_second_call_loads_from_cache_without_training(digits, tmp_path, monkeypatch):
    first = train_experts(digits, n=2, cache_dir=tmp_path, **SMALL)

    def no_training(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(experts, "_train_one", no_training)
    second = train_experts(digits, n=2, cache_dir=tmp_path, **SMALL)
    assert len(second) == 2
    for a, b in zip(first, second):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_more_experts_reuse_the_cached_ones(digits, tmp_path, monkeypatch):
    train_experts(digits, n=1, cache_dir=tmp_path, **SMALL)
    trained = []
    real = experts._train_one

    def counting(*args, **kwargs):
        trained.append(args[3])  # the seed
        return real(*args, **kwargs)

    monkeypatch.setattr(experts, "_train_one", counting)
    out = train_experts(digits, n=3, cache_dir=tmp_path, **SMALL)
    assert len(out) == 3 and trained == [1, 2]


def test_every_setting_changes_the_cache_key(digits):
    base = dict(dataset=digits, arch="mlp", epochs=2, lr=0.01, momentum=0.0, weight_decay=0.0,
                batch_size=256, dsa=True, seed=0, model_kw={})
    key = cache_key(expert_config(**base))
    assert cache_key(expert_config(**base)) == key
    for change in (dict(arch="convnet3"), dict(epochs=3), dict(lr=0.02), dict(momentum=0.9), dict(weight_decay=5e-4),
                   dict(batch_size=128), dict(dsa=False), dict(seed=1), dict(model_kw={"width": 8}),
                   dict(schedule="multistep"), dict(cutmix_prob=0.5), dict(dsa="idc:color_crop")):
        assert cache_key(expert_config(**{**base, **change})) != key, change
    other = load_dataset("digits")
    other.x_train[0] += 1.0  # same name and shape, different pixels
    assert cache_key(expert_config(**{**base, "dataset": other})) != key


def test_config_records_milestones_and_cutmix_only_when_used(digits):
    # constant lr and no CutMix (MTT's experts): the config holds no milestones or CutMix entries, as before
    config = expert_config(digits, "mlp", 2, 0.01, 0.0, 0.0, 256, True, 0, {})
    assert "cutmix_prob" not in config and "milestones" not in config and config["schedule"] == "constant"


def test_multistep_and_cutmix_reach_train_model(digits, tmp_path, monkeypatch):
    import ddnb.train

    seen = []
    real = ddnb.train.train_model
    monkeypatch.setattr(ddnb.train, "train_model", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    traj = train_experts(digits, n=1, cache_dir=tmp_path, **{**SMALL, "epochs": 3}, schedule="multistep",
                         cutmix_prob=0.5)
    assert len(traj[0]) == 4
    assert seen[0]["schedule"] == "multistep" and seen[0]["gamma"] == 0.2 and seen[0]["cutmix_prob"] == 0.5
    assert seen[0]["cutmix_alpha"] == 1.0 and list(seen[0]["milestones"]) == pytest.approx([2 / 3, 5 / 6])
    with pytest.raises(ValueError, match="schedule must be"):
        train_experts(digits, n=1, cache_dir=tmp_path, **SMALL, schedule="cosine")


def test_foreign_file_in_the_cache_is_a_clear_error(digits, tmp_path):
    train_experts(digits, n=1, cache_dir=tmp_path, **SMALL)
    (path,) = tmp_path.rglob("expert_000.safetensors")
    path.write_text("not an expert")
    with pytest.raises(ValueError, match="expert_000.safetensors"):
        train_experts(digits, n=1, cache_dir=tmp_path, **SMALL)


def test_load_params_roundtrip_and_size_check():
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    load_params(b, flatten_params(a))
    x = torch.randn(5, 3)
    assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError, match="26 parameters"):
        load_params(b, torch.zeros(25))


def test_bad_arguments_are_errors(digits, tmp_path):
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        train_experts(digits, n=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="lr must be > 0"):
        train_experts(digits, lr=0.0, cache_dir=tmp_path)


def test_default_cache_dir_follows_ddnb_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DDNB_CACHE", str(tmp_path))
    assert experts.default_cache_dir() == tmp_path / "experts"
    monkeypatch.delenv("DDNB_CACHE")
    assert experts.default_cache_dir().parts[-3:] == (".cache", "ddnb", "experts")
