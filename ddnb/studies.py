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
(2-core AMD EPYC, alone; results/01_selmatch_incompatibility/cpu-fashion_mnist-ipc40-seed0.json): 29 min in
all, of which scores 37 s and the validation grid 19 min. `paper`: 000 §3.2 on Fashion-MNIST's 5 % and 10 %
(IPC 300, 600)."""

NB02: dict[str, dict[str, Any]] = {
    "smoke": dict(probe_epochs=1, dm_iterations=None, eval_epochs=None, speed_iterations=2, ablation_iterations=2,
                  ablation_eval_epochs=2, ablation_experts=[1], tsne_per_class=10),
    # cut to fit the hour on 2 CPU cores (DM's budget, 500 iterations, and 300-epoch evaluations: over 2 h); with
    # these, Fashion-MNIST IPC 10 and an empty cache: 39 min (results/02_dance_distribution_shift/)
    "cpu": dict(probe_epochs=6, dm_iterations=200, eval_epochs=150, speed_iterations=10, ablation_iterations=20,
                ablation_eval_epochs=60, ablation_experts=[1, 2], tsne_per_class=40),
    "paper": dict(probe_epochs=60, dm_iterations=None, eval_epochs=None, speed_iterations=100,
                  ablation_iterations=10_000, ablation_eval_epochs=1000, ablation_experts=[1, 2, 3, 4, 10, 15, 20],
                  tsne_per_class=100),
}
"""Notebook 02 (DANCE): epochs of the held-out probe (001 Fig. 3a), DM's iterations per distillation seed (None:
DM's budget; DANCE gets the same seconds), epochs of Tab. 1's evaluations (None: each set's protocol, DM with DSA
1,000 and DANCE IDC's 1,500), iterations timed per method (Tab. 4; DANCE's median seconds per iteration over them
also sets its equal-time iterations), length and evaluation epochs of each ablation run and the expert counts
compared (Tab. 5, 6; paper: 1-20 experts, 10,000 iterations), t-SNE points per class."""

NB03: dict[str, dict[str, Any]] = {
    "smoke": dict(curve_points=2, trace_steps=6, trace_pool=64),
    # Fashion-MNIST (IPC 10), 2 CPU cores, empty cache: 47 min (results/03_dream_mmd_tsne/)
    "cpu": dict(curve_points=4, trace_steps=12, trace_pool=1000),
    "paper": dict(curve_points=12, trace_steps=100, trace_pool=1000),
}
"""Notebook 03 (DREAM): in-loop evaluations per distillation (accuracy curves), steps and real images
per class of the sampler trace (002 Fig. 2b, 1a/5, 8)."""

NB04: dict[str, dict[str, Any]] = {
    "smoke": dict(ipc=8, seeds=2, oracle_betas=[0.5], oracle_seeds=1, curricula=[1, 2, 3, 4], classes=3, tab1_ipcs=1,
                  test_per_class=10),
    # Fashion-MNIST (IPC 10 and 20), 2 CPU cores, empty cache: 51 min (results/04_ccfs_curriculum/)
    "cpu": dict(ipc=10, seeds=3, oracle_betas=[0.0, 0.3, 0.6, 0.9], oracle_seeds=1, curricula=[1, 2, 3, 4], classes=3,
                tab1_ipcs=2, test_per_class=300),
    "paper": dict(ipc=300, seeds=3, oracle_betas=[round(0.1 * i, 1) for i in range(10)], oracle_seeds=2,
                  curricula=[1, 2, 3, 4], classes=3, tab1_ipcs=2, test_per_class=None),
}
"""Notebook 04 (CCFS): the lower IPC (the higher is twice it; paper: 5 % and 10 % of Fashion-MNIST, IPC 300
and 600), run seeds per configuration, the oracle window's betas and validation seeds (Tab. 1), the curricula
compared (Tab. 5), classes shown in Fig. 4c, how many of the two IPCs Tab. 1 covers (smoke: the lower only), the
test images per class every accuracy is measured on (a seeded stratified subset; None: the whole test set).
Filter and evaluation epochs are the ccfs budget's `epochs`."""

_NB05_COMMON = dict(teacher="convnet3_bn", oracle_seeds=1, val_fraction=0.05, flat_tol=1.0, modest_below=0.6,
                   n_boot=50, cad_order="hard", cad_model_kw={"width": 32})
NB05: dict[str, dict[str, Any]] = {
    "smoke": dict(_NB05_COMMON, ipcs=[2], seeds=2, epochs=6, curve_epochs=[2, 3, 4, 5, 6], test_per_class=10,
                  pool=40, oracle_betas=[0.0, 1.0], teacher_epochs=2, teacher_pool=None, weak_epochs=1, weak_pool=10,
                  dm_iterations=3, dm_batch_real=16, sre2l_iterations=3, dcs_nets=2, dcs_real=16, cross_archs=["mlp"],
                  score_budget="smoke", cad_long_epochs=4, n_boot=2),
    # an estimate from unit costs (not measured): about 45 minutes on 2 CPU cores with Fashion-MNIST, see below
    "cpu": dict(_NB05_COMMON, ipcs=[1, 10], seeds=2, epochs=50, curve_epochs=[5, 10, 20, 35, 50], test_per_class=200,
                pool=500, oracle_betas=[0.0, 0.5, 1.0], teacher_epochs=2, teacher_pool=None, weak_epochs=2,
                weak_pool=500, dm_iterations=150, dm_batch_real=64, sre2l_iterations=200, dcs_nets=8, dcs_real=128,
                cross_archs=["mlp"], score_budget="cpu", cad_long_epochs=20),
    "paper": dict(_NB05_COMMON, ipcs=[1, 10, 50], seeds=3, epochs=300, curve_epochs=[10, 25, 50, 100, 150, 200, 300],
                  test_per_class=None, pool=None, oracle_betas=[round(0.1 * i, 1) for i in range(10)], oracle_seeds=2,
                  teacher_epochs=20, teacher_pool=None, weak_epochs=2, weak_pool=None, dm_iterations=20_000,
                  dm_batch_real=256, sre2l_iterations=1000, dcs_nets=20, dcs_real=256, cross_archs=["mlp", "resnet10"],
                  score_budget="paper", cad_long_epochs=300, n_boot=200, cad_model_kw={}),
}
"""Notebook 05 (soft labels, paper 004): the IPCs, evaluation seeds (model seeds; one set per IPC), the evaluation
epochs of every regime (004 Tab. 1: 300) and the epochs at which the curves are tested (top IPC only), test images
per class every accuracy is measured on (None: the whole test set), the pool per class the coresets are drawn from
(EL2N, herding, k-center; None: every image), the oracle window's betas / seeds / validation fraction, the teacher
(registry name; its epochs and pool per class, None: all data) and the weak teacher's epochs and pool, DM's and
SRe2L's iterations (DM: real images per class), DCS's random networks and real images per class, the second
architectures, the score budget, CAD-Prune's long run and its scoring network, the flatness tolerance of the
compression-extraction curves (pp), the bound below which DCS's rho counts as modest, bootstrap resamples.
`cpu` (Fashion-MNIST) from the unit costs measured here (2-core CPU: ConvNet-3 forward+backward on 256 images
0.5 s, forward over 10,000 test images 8 s, DM 1.5 s per iteration at 128 real images per class, an epoch over
60,000 images 2 min): teachers (all data, 2 epochs; weak: 500 per class, 2 epochs) 4.6 min; scores (EL2N,
EL2N-SL, the oracle's) 0.6 min; oracle window 0.9 min; herding / k-center 0.3 min; DM (150 it., 64 real) 3.5 min;
SRe2L (200 it.) 1.1 min; saturation (8 sets x 3 regimes x 2 IPCs x 2 seeds, 50 epochs, 2000 test images, five
curve points at IPC 10) 20 min; MLP 1 min; weak teacher 5.7 min; DCS (degenerate sets, DM loss) 4 min; CAD-Prune
2.2 min; fits and figures 1.5 min: about 45 min. `paper`: 004 Tab. 1 (300 epochs; teachers and distillers at
their paper budgets)."""

STUDIES: dict[str, dict[str, dict[str, Any]]] = {"01_selmatch_incompatibility": NB01,
                                                 "02_dance_distribution_shift": NB02, "03_dream_mmd_tsne": NB03,
                                                 "04_ccfs_curriculum": NB04, "05_soft_label_saturation": NB05}


def study(notebook: str, budget: str) -> dict[str, Any]:
    """A copy of the study sizes of `notebook` (its file name without .ipynb) at `budget`."""
    if notebook not in STUDIES:
        raise ValueError(f"no study sizes for notebook {notebook!r}; allowed: {', '.join(STUDIES)}")
    sizes = STUDIES[notebook]
    if budget not in sizes:
        raise ValueError(f"notebook {notebook} has no study sizes for budget {budget!r}; allowed: {', '.join(sizes)}")
    return copy.deepcopy(sizes[budget])
