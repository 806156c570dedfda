"""The notebooks' study sizes: one dict per notebook, every budget, read by name."""
from __future__ import annotations

import pytest

from ddnb import studies
from ddnb.methods import BUDGETS


@pytest.mark.parametrize("notebook", sorted(studies.STUDIES))
def test_every_notebook_has_sizes_for_every_budget(notebook):
    assert set(studies.STUDIES[notebook]) == set(BUDGETS)
    for budget in BUDGETS:
        assert studies.study(notebook, budget) == studies.STUDIES[notebook][budget]


def test_study_returns_a_copy():
    sizes = studies.study("02_dance_distribution_shift", "smoke")
    sizes["ablation_experts"].append(99)
    assert studies.NB02["smoke"]["ablation_experts"] == [1]
    assert studies.study("03_dream_mmd_tsne", "cpu") == dict(curve_points=4, trace_steps=12, trace_pool=1000)


def test_unknown_budget_or_notebook_names_value_and_allowed():
    with pytest.raises(ValueError, match=r"budget 'gpu'.*allowed: smoke, cpu, paper"):
        studies.study("03_dream_mmd_tsne", "gpu")
    with pytest.raises(ValueError, match=r"notebook '99_x'.*allowed: 01_selmatch_incompatibility, 02_dance"):
        studies.study("99_x", "smoke")
