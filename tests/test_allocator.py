"""training/allocator.py: glibc keeps freed memory (the CPU speed setting of the runner)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import ctypes, resource, sys, time
sys.path.insert(0, {root!r})
from training.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
import torch
for _ in range(10):  # the first steps: torch's own start-up faults, the heap grows to its working size
    x = torch.ones(16 * 2**20)
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # the next steps: allocate, touch and free the same 64 MB buffer
    x = torch.ones(16 * 2**20)
    del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_buffers_are_reused_without_new_page_faults():
    def run(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT)), mode], capture_output=True,
                             text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout.split()
        return out[0], int(out[1])

    applied, faults_on = run("on")
    _, faults_off = run("off")
    assert applied == "True"
    pages = 16 * 2**20 * 4 // 4096  # one buffer's pages
    assert faults_off > 15 * pages  # every buffer faults its pages in again
    assert faults_on < pages  # the first buffer's pages are reused (measured: 0)


def test_opt_out(monkeypatch):
    from training.allocator import keep_freed_memory

    monkeypatch.setenv("DATGPT_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
