"""The DREAM sampler as a plug-in of DC, DSA and DM (`distill(..., sampler="dream")`, 002 §3.3)."""
from __future__ import annotations


import pytest
import torch

import ddnb
from ddnb.data import load_dataset

PER_CLASS = 12


@pytest.fixture(scope="module")
def even_digits():
    """Digits cut to PER_CLASS training images in every class, so a batch can be a whole class."""
    data = load_dataset("digits")
    idx = torch.cat([data.class_indices()[c][:PER_CLASS] for c in range(data.num_classes)])
    return data.subset(idx)


def test_dm_dream_with_k_equal_class_size_matches_the_whole_class(even_digits):
    # k = class size: every image is its own sub-cluster, so DREAM's batch is the whole class, as is
    # a uniform draw of the whole class; DM's loss only sees class means, so both runs must agree.
    kw = dict(budget="smoke", seed=3, progress=False, iterations=3, batch_real=PER_CLASS, dsa_strategy=None)
    dream, h_dream = ddnb.distill("dm", even_digits, 2, sampler="dream", kmeans_iters=5, **kw)
    plain, h_plain = ddnb.distill("dm", even_digits, 2, **kw)
    assert h_dream.loss == pytest.approx(h_plain.loss, rel=1e-4)
    torch.testing.assert_close(dream.images, plain.images, atol=1e-5, rtol=1e-4)


def test_dm_dream_uses_a_different_batch_than_random(even_digits):
    # k < class size: the representative batch differs from a uniform draw, so the images must too
    kw = dict(budget="smoke", seed=3, progress=False, iterations=2, batch_real=4, dsa_strategy=None)
    dream, _ = ddnb.distill("dm", even_digits, 2, sampler="dream", kmeans_iters=5, **kw)
    plain, _ = ddnb.distill("dm", even_digits, 2, **kw)
    assert not torch.allclose(dream.images, plain.images)
    assert dream.provenance["params"]["sampler"] == "dream"


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_gradient_matching_resumes_the_dream_selection(method, even_digits, tmp_path):
    # interval 3 over 2 outer steps per iteration: iteration 2 starts inside a clustering block, so
    # an exact resume needs the checkpointed selection, not a fresh clustering
    kw = dict(budget="smoke", seed=1, device="cpu", progress=False, iterations=3, outer_loop=2, batch_real=4,
              sampler="dream", kmeans_iters=5, interval=3)
    straight, _ = ddnb.distill(method, even_digits, 1, **kw)
    ddnb.distill(method, even_digits, 1, out_dir=tmp_path, checkpoint_every=1, **kw)
    (tmp_path / "ckpt_00000003.pt").unlink()
    resumed, hist = ddnb.distill(method, even_digits, 1, out_dir=tmp_path, resume=True, checkpoint_every=1, **kw)
    assert hist.iterations == 3
    torch.testing.assert_close(resumed.images, straight.images)


def test_unknown_sampler_is_named(even_digits):
    with pytest.raises(ValueError, match="dm setting sampler='kmeans' is not allowed; allowed: one of 'random', 'dream'"):
        ddnb.distill("dm", even_digits, 1, budget="smoke", sampler="kmeans", progress=False)
