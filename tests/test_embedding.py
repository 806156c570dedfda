"""Features and 2-D maps: `embed_images` against one forward pass, and `project_2d` (t-SNE, UMAP)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ddnb.embedding import embed_images, project_2d
from ddnb.models import get_model


class Doubled(nn.Module):
    """A parameter-free 'network' whose embedding keeps the image shape: embed_images flattens it."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_embed_images_equals_one_eval_pass_and_restores_the_mode():
    torch.manual_seed(0)
    net = get_model("convnet", 1, 3, 8, depth=1, width=4, norm="batchnorm")
    net.train()
    x = torch.randn(7, 1, 8, 8)
    net.eval()
    with torch.no_grad():
        want = net.embed(x)
    net.train()
    got = embed_images(net, x, batch_size=3)
    assert net.training and not got.requires_grad and got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(embed_images(Doubled(), x, batch_size=2), 2 * x.flatten(1))


def test_project_2d_shapes_seeds_and_errors():
    feats = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    xy = project_2d(feats, "tsne", seed=1)
    assert xy.shape == (12, 2) and np.isfinite(xy).all()
    assert np.array_equal(xy, project_2d(feats.numpy(), "tsne", seed=1))
    assert project_2d(feats, "umap", seed=1).shape == (12, 2)
    with pytest.raises(ValueError, match="tsne"):
        project_2d(feats, "pca")
    with pytest.raises(ValueError, match="at least 4 points"):
        project_2d(feats[:3], "tsne")
    with pytest.raises(ValueError, match="at least 5 points"):
        project_2d(feats[:4], "umap")
