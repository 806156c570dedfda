"""teachers.py: cached teachers (weights and BN buffers), the registry, and relabel = the teacher's logits per image."""
from __future__ import annotations

import pytest
import torch

from ddnb.data import load_dataset
from ddnb.synset import SyntheticSet
from ddnb.teachers import TEACHERS, get_teacher, relabel, train_teacher

SMALL = dict(epochs=1, model_kw={"width": 8, "norm": "batchnorm"}, pool=20, dsa=False, progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_teacher_is_cached_with_its_batchnorm_statistics(digits, tmp_path, monkeypatch):
    first = train_teacher(digits, "convnet3", cache_dir=tmp_path, **SMALL)
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    assert 0 <= first.ddnb_teacher["test_acc"] <= 100

    def no_training(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("ddnb.train.train_model", no_training)
    second = train_teacher(digits, "convnet3", cache_dir=tmp_path, **SMALL)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.ddnb_teacher["key"] == first.ddnb_teacher["key"]


def test_another_setting_is_another_teacher(digits, tmp_path):
    a = train_teacher(digits, "convnet3", cache_dir=tmp_path, **SMALL)
    b = train_teacher(digits, "convnet3", cache_dir=tmp_path, **{**SMALL, "seed": 1})
    assert a.ddnb_teacher["key"] != b.ddnb_teacher["key"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_registry_names_weak_and_strong_convnet3_and_resnet10(digits, tmp_path):
    assert {"convnet3", "convnet3_weak", "resnet10_bn", "resnet10_bn_weak"} <= set(TEACHERS)
    assert TEACHERS["convnet3_weak"]["epochs"] < TEACHERS["convnet3"]["epochs"]
    t = get_teacher("convnet3_weak", digits, cache_dir=tmp_path, pool=10, dsa=False, progress=False,
                    model_kw={"width": 8})
    assert t.ddnb_teacher["name"] == "convnet3_weak" and t.ddnb_teacher["epochs"] == 2
    with pytest.raises(ValueError, match="unknown teacher"):
        get_teacher("vit", digits)


def test_relabel_gives_the_teachers_logits_for_each_image(digits, tmp_path):
    teacher = train_teacher(digits, "convnet3", cache_dir=tmp_path, **SMALL)
    idx = torch.tensor([0, 5, 17, 40, 99])
    coreset = SyntheticSet.from_real(digits, idx, "random")
    soft = relabel(coreset, teacher, batch_size=2)  # several batches
    assert soft.label_kind == "soft_logits" and soft.labels.shape == (5, 10)
    for i, j in enumerate(idx.tolist()):
        with torch.no_grad():
            direct = teacher(digits.x_train[j:j + 1])[0]
        assert torch.allclose(soft.labels[i], direct, atol=1e-5)
    assert torch.equal(soft.images, coreset.images)
    assert soft.eval_protocol == {"name": "sl"}
    assert soft.provenance["relabel"]["hard_labels"] == digits.y_train[idx].tolist()
    assert soft.provenance["method"] == "random"


def test_relabel_decodes_a_factored_set_and_restores_the_teachers_mode(digits, tmp_path):
    teacher = train_teacher(digits, "convnet3", cache_dir=tmp_path, **SMALL)
    teacher.train()
    images = torch.randn(4, 1, 8, 8)
    factored = SyntheticSet(images, torch.arange(4), "digits", 10, (1, 8, 8), factor=2)
    soft = relabel(factored, teacher)
    assert teacher.training  # its mode is restored
    decoded, _ = factored.decoded()
    assert soft.factor == 1 and soft.images.shape[0] == 16
    teacher.eval()
    with torch.no_grad():
        assert torch.allclose(soft.labels, teacher(decoded), atol=1e-5)


def test_relabel_refuses_a_non_module(digits):
    coreset = SyntheticSet.from_real(digits, torch.arange(3), "random")
    with pytest.raises(ValueError, match="nn.Module"):
        relabel(coreset, "convnet3")


def test_cli_eval_with_a_named_teacher_under_sl_and_sl_kd(tmp_path, monkeypatch, capsys, digits):
    import json

    from ddnb.cli import main

    monkeypatch.setenv("DDNB_CACHE", str(tmp_path))
    monkeypatch.setitem(TEACHERS, "convnet3_weak", dict(arch="convnet3", model_kw={"width": 8}, epochs=1, pool=10,
                                                        dsa=False))
    path = tmp_path / "set.safetensors"
    SyntheticSet.from_real(digits, torch.arange(20), "random").save(path)
    for protocol in ("sl", "sl+kd"):
        assert main(["eval", str(path), "--protocol", protocol, "--teacher", "convnet3_weak", "--epochs", "1",
                     "--seeds", "1", "--json", "--quiet", "--device", "cpu"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["protocol"]["regime"] == protocol and res["teacher_name"] == "convnet3_weak"
    assert res["protocol"]["teacher"] is not None and res["protocol"]["cutmix_alpha"] == 1.0
    assert len(list((tmp_path / "teachers").glob("*.safetensors"))) == 1  # trained once, then cached
    assert main(["eval", str(path), "--teacher", "convnet3_weak", "--seeds", "1", "--quiet"]) == 2
    assert "--teacher needs --protocol sl or sl+kd" in capsys.readouterr().err
