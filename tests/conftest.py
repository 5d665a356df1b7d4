"""Shared fixtures. Tests read corpora from DATGPT_DATA_DIR (CI points it at ../shared/data)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if not os.environ.get("DATGPT_DATA_DIR"):
    fallback = ROOT.parent / "shared" / "data"
    if fallback.is_dir():
        os.environ["DATGPT_DATA_DIR"] = str(fallback)


@pytest.fixture
def data_dir() -> Path:
    path = Path(os.environ.get("DATGPT_DATA_DIR", ""))
    if not (path / "the-verdict.txt").is_file():
        pytest.fail("DATGPT_DATA_DIR must point at a folder holding the-verdict.txt (e.g. ../shared/data)")
    return path
