"""Study sizes of the notebooks, per budget: how large the analyses a notebook runs beside its
distillations are (the distillations themselves use the methods' budgets). One dict per notebook,
keyed by budget; a notebook reads its sizes with `study(notebook, budget)`."""
from __future__ import annotations

import copy
from typing import Any

NB01: dict[str, dict[str, Any]] = {
    "smoke": dict(ipcs=[2], alphas=[0.5], betas=[0.0, 1.0], val_fraction=0.2, val_seeds=1, val_epochs=2,
                  filter_epochs=2, eval_epochs=10),
    "cpu": dict(ipcs=[20, 40], alphas=[0.3, 0.6], betas=[0.0, 0.5, 1.0], val_fraction=0.05, val_seeds=1, val_epochs=8,
                filter_epochs=8, eval_epochs=20),
    "paper": dict(ipcs=[300, 600], alphas=[0.2, 0.4, 0.6, 0.8], betas=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                  val_fraction=0.05, val_seeds=2, val_epochs=500, filter_epochs=500, eval_epochs=500),
}
"""Notebook 01 (SelMatch's incompatibility, 000 §3.2 Fig. 2): the IPCs of Fig. 2a (the notebook adds its `ipc`,
the IPC of Fig. 2b), the alpha x beta grid each setting is tuned over on a validation split (`val_fraction`
of the training set, `val_seeds` models of `val_epochs` epochs per set), the epochs of the two-shot filter
models (CCFS trains them as long as the final evaluation) and of the final test evaluations.
`cpu`: Fashion-MNIST at IPC 20 and 40, DM base (selmatch `cpu`: 30 iterations, 64 real images per class,
forgetting scores of the `cpu` score budget: 500 images per class, 2 seeds x 10 epochs). Measured here
(2-core AMD EPYC, alone; results/01_selmatch_incompatibility/cpu-fashion_mnist-ipc40-seed0.json): 31 min in
all, of which scores 39 s and the validation grid 20 min. `paper`: 000 §3.2 on Fashion-MNIST's 5 % and 10 %
(IPC 300, 600)."""

NB02: dict[str, dict[str, Any]] = {
    "smoke": dict(probe_epochs=1, speed_iterations=2, ablation_iterations=2, ablation_eval_epochs=2,
                  ablation_experts=[1], tsne_per_class=10),
    "cpu": dict(probe_epochs=6, speed_iterations=10, ablation_iterations=30, ablation_eval_epochs=100,
                ablation_experts=[1, 2], tsne_per_class=40),
    "paper": dict(probe_epochs=60, speed_iterations=100, ablation_iterations=10_000, ablation_eval_epochs=1000,
                  ablation_experts=[1, 2, 3, 4, 10, 15, 20], tsne_per_class=100),
}
"""Notebook 02 (DANCE): epochs of the held-out probe (001 Fig. 3a), iterations timed per method (Tab. 4; DANCE's
median seconds per iteration over them also sets its equal-time iterations),
length and evaluation epochs of each ablation run and the expert counts compared (Tab. 5, 6; paper:
1-20 experts, 10,000 iterations), t-SNE points per class."""

NB03: dict[str, dict[str, Any]] = {
    "smoke": dict(curve_points=2, trace_steps=6, trace_pool=64),
    "cpu": dict(curve_points=4, trace_steps=12, trace_pool=1000),
    "paper": dict(curve_points=12, trace_steps=100, trace_pool=1000),
}
"""Notebook 03 (DREAM): in-loop evaluations per distillation (accuracy curves), steps and real images
per class of the sampler trace (002 Fig. 2b, 1a/5, 8)."""

NB04: dict[str, dict[str, Any]] = {
    "smoke": dict(ipc=8, seeds=2, oracle_betas=[0.5], oracle_seeds=1, curricula=[1, 2, 3, 4], classes=3, tab1_ipcs=1),
    # sized to finish in about 60 minutes on 2 CPU cores with Fashion-MNIST (IPC 10 and 20)
    "cpu": dict(ipc=10, seeds=3, oracle_betas=[0.0, 0.3, 0.6, 0.9], oracle_seeds=1, curricula=[1, 2, 3, 4], classes=3,
                tab1_ipcs=2),
    "paper": dict(ipc=300, seeds=3, oracle_betas=[round(0.1 * i, 1) for i in range(10)], oracle_seeds=2,
                  curricula=[1, 2, 3, 4], classes=3, tab1_ipcs=2),
}
"""Notebook 04 (CCFS): the lower IPC (the higher is twice it; paper: 5 % and 10 % of Fashion-MNIST, IPC 300
and 600), run seeds per configuration, the oracle window's betas and validation seeds (Tab. 1), the curricula
compared (Tab. 5), classes shown in Fig. 4c, how many of the two IPCs Tab. 1 covers (smoke: the lower only).
Filter and evaluation epochs are the ccfs budget's `epochs`."""

STUDIES: dict[str, dict[str, dict[str, Any]]] = {"01_selmatch_incompatibility": NB01,
                                                 "02_dance_distribution_shift": NB02, "03_dream_mmd_tsne": NB03,
                                                 "04_ccfs_curriculum": NB04}


def study(notebook: str, budget: str) -> dict[str, Any]:
    """A copy of the study sizes of `notebook` (its file name without .ipynb) at `budget`."""
    if notebook not in STUDIES:
        raise ValueError(f"no study sizes for notebook {notebook!r}; allowed: {', '.join(STUDIES)}")
    sizes = STUDIES[notebook]
    if budget not in sizes:
        raise ValueError(f"notebook {notebook} has no study sizes for budget {budget!r}; allowed: {', '.join(sizes)}")
    return copy.deepcopy(sizes[budget])
