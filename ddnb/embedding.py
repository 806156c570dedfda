"""Where images sit in a network's feature space: `embed_images` (the features `model.embed` gives,
batched and without gradients; shared by samplers, coreset selectors and analyses) and `project_2d`
(t-SNE or UMAP maps of features, for the notebooks' scatter plots)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

EMBED_BATCH = 1024  # images embedded per forward pass
PROJECTIONS = ("tsne", "umap")
MIN_POINTS = {"tsne": 4, "umap": 5}  # fewer make the perplexity or the neighbourhood graph degenerate


@torch.no_grad()
def embed_images(model: nn.Module, images: Tensor, batch_size: int = EMBED_BATCH) -> Tensor:
    """(n, d) float features `model.embed(images)` on the model's device, in eval mode without gradients.

    Images go through in batches of `batch_size` (moved to the model's device; a model without
    parameters runs where the images are); the model's training mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters(), images).device
        feats = [model.embed(images[i:i + batch_size].to(dev)).flatten(1)
                 for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(feats).float()


def project_2d(feats: Tensor | np.ndarray, method: str = "tsne", *, perplexity: float = 30.0,
               seed: int = 0) -> np.ndarray:
    """(n, 2) t-SNE or UMAP projection of the rows of feats, fitted on all of them (seeded).

    t-SNE: PCA init, perplexity capped at (n - 1) / 3, run on one thread (its OpenMP threads
    spin-wait badly on a busy CPU, 15x slower measured). UMAP: min(15, n - 1) neighbours.
    """
    x = feats.detach().cpu().numpy() if isinstance(feats, Tensor) else np.asarray(feats)
    if method not in PROJECTIONS:
        raise ValueError(f"projection method must be one of {PROJECTIONS}, got {method!r}")
    if x.shape[0] < MIN_POINTS[method]:
        raise ValueError(f"a 2-D {method} projection needs at least {MIN_POINTS[method]} points, got {x.shape[0]}")
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        tsne = TSNE(n_components=2, perplexity=min(perplexity, (x.shape[0] - 1) / 3), init="pca", random_state=seed)
        with threadpool_limits(1):
            return tsne.fit_transform(x)
    import umap

    return umap.UMAP(n_components=2, n_neighbors=min(15, x.shape[0] - 1), random_state=seed).fit_transform(x)
