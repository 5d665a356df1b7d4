"""The clean install: `pip install -e .` installs the dependencies only, never the project's generic top-level
names (`models`, `training`, `analysis`, `runner`), which would overwrite another project's `models` in
site-packages without a word. The code runs from the checkout (README, set-up notes; docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_installs_no_top_level_package():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools.get("packages") == [] and setuptools.get("py-modules") == []
    assert "find" not in setuptools.get("packages", {}) and "package-data" not in setuptools


def test_entry_points_run_from_the_checkout():
    """`python -m analysis ...` works in the checkout root with nothing installed but the dependencies."""
    proc = subprocess.run([sys.executable, "-m", "analysis", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "figures" in proc.stdout, proc.stderr[-2000:]
