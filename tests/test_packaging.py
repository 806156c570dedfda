"""The install lists agree: pyproject.toml and environment.yml name the same dependencies."""
from __future__ import annotations

import re
import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the check is the same on any version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The distribution name of a requirement string, normalized (PEP 503)."""
    return re.split(r"[<>=!~\s\[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + list(meta["optional-dependencies"]["test"])
    return {_name(r) for r in reqs}


def _environment_names() -> set[str]:
    names = set()
    text = (ROOT / "environment.yml").read_text().split("dependencies:", 1)[1]
    for line in text.splitlines():
        item = line.strip()
        if not item.startswith("- ") or item.endswith(":"):
            continue
        item = item[2:].strip()
        if item.startswith("-e ") or item in ("pip", ".") or item.startswith("python"):
            continue
        names.add(_name(item))
    return names


def test_environment_yml_matches_pyproject():
    assert _environment_names() == _pyproject_names()


def test_name_parsing_handles_specifiers():
    assert _name("scikit-learn>=1.3") == "scikit-learn"
    assert _name("pytest_timeout >= 2") == "pytest-timeout"
    assert _name("torch[cuda]==2.1; python_version>'3'") == "torch"
