"""Study sizes of the notebooks, per budget: how large the analyses a notebook runs beside its
distillations are (the distillations themselves use the methods' budgets). One dict per notebook,
keyed by budget; a notebook reads its sizes with `study(notebook, budget)`."""
from __future__ import annotations

import copy
from typing import Any

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

STUDIES: dict[str, dict[str, dict[str, Any]]] = {"02_dance_distribution_shift": NB02, "03_dream_mmd_tsne": NB03}


def study(notebook: str, budget: str) -> dict[str, Any]:
    """A copy of the study sizes of `notebook` (its file name without .ipynb) at `budget`."""
    if notebook not in STUDIES:
        raise ValueError(f"no study sizes for notebook {notebook!r}; allowed: {', '.join(STUDIES)}")
    sizes = STUDIES[notebook]
    if budget not in sizes:
        raise ValueError(f"notebook {notebook} has no study sizes for budget {budget!r}; allowed: {', '.join(sizes)}")
    return copy.deepcopy(sizes[budget])

NB04: dict[str, dict[str, Any]] = {
    "smoke": dict(ipc=8, seeds=2, oracle_betas=[0.5], oracle_seeds=1, curricula=[1, 2, 3, 4], classes=3, tab1_ipcs=1),
    # an estimate, not measured: sized to finish in about 60 minutes on 2 CPU cores with Fashion-MNIST
    "cpu": dict(ipc=20, seeds=3, oracle_betas=[0.0, 0.3, 0.6, 0.9], oracle_seeds=1, curricula=[1, 2, 3, 4], classes=3,
                tab1_ipcs=2),
    "paper": dict(ipc=300, seeds=3, oracle_betas=[round(0.1 * i, 1) for i in range(10)], oracle_seeds=2,
                  curricula=[1, 2, 3, 4], classes=3, tab1_ipcs=2),
}
"""Notebook 04 (CCFS): the lower IPC (the higher is twice it; paper: 5 % and 10 % of Fashion-MNIST, IPC 300
and 600), run seeds per configuration, the oracle window's betas and validation seeds (Tab. 1), the curricula
compared (Tab. 5), classes shown in Fig. 4c, how many of the two IPCs Tab. 1 covers (smoke: the lower only). Filter and evaluation epochs are the ccfs budget's `epochs`."""
STUDIES["04_ccfs_curriculum"] = NB04
