"""Shared fixtures. Tests read corpora from DATGPT_DATA_DIR (CI points it at ../shared/data)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.allocator import keep_freed_memory  # noqa: E402 - after the sys.path line

keep_freed_memory()  # what the runner does on CPU: the in-process tests train as fast as the runner

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


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and it keeps tests robust to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
