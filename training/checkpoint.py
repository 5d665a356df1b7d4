"""Checkpoints: atomic, resumable, and safe to load.

Layout, one folder per invocation (the MLflow parent run) so a finished run is never overwritten:

    <checkpoint.dir>/<experiment>/<parent_run_id>/invocation.json
    <checkpoint.dir>/<experiment>/<parent_run_id>/<arm>-seed<seed>/step_00000080.pt
    <checkpoint.dir>/<experiment>/<parent_run_id>/<unit key>/branch_00000064.pt   (sweep cooldown trunks)

`invocation.json` records the config hash, the parent run and whether the invocation finished; each
checkpoint holds the model and its config (`model_config`, read by `init_from` and the sampler), the
optimizer (not in a run's final checkpoint: nothing resumes from it), the step, the tokens seen, the RNG
states, the evaluation curve so far, the config hash and the MLflow child run id. The data position is
the step: batches are a pure function of (seed, step), and the learning rate a pure function of the
tokens seen, so neither needs state of its own. Files are written to a temp file, fsynced, then renamed: a crash or a full disk
leaves the previous checkpoint intact. Loading uses `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.atomic import atomic_write

CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be written, or a checkpoint that cannot be used."""


def check_writable(folder: Path) -> None:
    """Fail before training when checkpoints could not be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / ".write_test", lambda f: f.write(b"ok"))
        (folder / ".write_test").unlink()
    except OSError as err:
        raise CheckpointError(f"checkpoint.dir: cannot write checkpoints to {folder} ({err.strerror or err})") from None


@dataclass
class Invocation:
    """One runner invocation's checkpoint folder."""

    folder: Path
    parent_run_id: str
    config_hash: str
    finished: bool = False

    @property
    def manifest(self) -> Path:
        return self.folder / "invocation.json"

    def save(self) -> None:
        blob = json.dumps({"parent_run_id": self.parent_run_id, "config_hash": self.config_hash,
                           "finished": self.finished, "version": CHECKPOINT_VERSION}, indent=2).encode()
        atomic_write(self.manifest, lambda f: f.write(blob))

    def arm_folder(self, arm: str, seed: int) -> Path:
        return self.folder / f"{arm}-seed{seed}"

    @classmethod
    def load(cls, folder: Path) -> "Invocation":
        try:
            data = json.loads((folder / "invocation.json").read_text())
            return cls(folder, data["parent_run_id"], data["config_hash"], bool(data["finished"]))
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{folder}: not a datgpt checkpoint folder ({err})") from None


def find_unfinished(root: Path) -> Invocation | None:
    """The most recent unfinished invocation under `<checkpoint.dir>/<experiment>`, if any."""
    if not root.is_dir():
        return None
    found = []
    for manifest in root.glob("*/invocation.json"):
        try:
            inv = Invocation.load(manifest.parent)
        except CheckpointError:
            continue
        if not inv.finished:
            found.append((manifest.stat().st_mtime, inv))
    return max(found, key=lambda item: item[0])[1] if found else None


def checkpoints_in(folder: Path) -> list[Path]:
    """Checkpoint files of one arm and seed, oldest step first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _STEP_FILE.match(p.name))


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write `step_XXXXXXXX.pt` atomically, then delete all but the newest `keep_last`."""
    path = folder / f"step_{step:08d}.pt"
    state = {**state, "version": CHECKPOINT_VERSION, "step": step}
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as err:
        raise CheckpointError(f"checkpoint.dir: could not write {path} ({err.strerror or err}); the previous "
                              f"checkpoint is intact") from None
    for old in checkpoints_in(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def branch_path(folder: Path, step: int) -> Path:
    """A cooldown trunk's checkpoint at `step` (sweep.method cooldown): never pruned, not a resume point."""
    return folder / f"branch_{step:08d}.pt"


def save_branch(folder: Path, step: int, state: dict[str, Any]) -> Path:
    path = branch_path(folder, step)
    state = {**state, "version": CHECKPOINT_VERSION, "step": step}
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as err:
        raise CheckpointError(f"checkpoint.dir: could not write {path} ({err.strerror or err})") from None
    return path


def load_branch(folder: Path, step: int) -> dict[str, Any]:
    """The trunk state a cooldown branch starts from; CheckpointError when it is missing or unreadable."""
    path = branch_path(folder, step)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"cooldown branch checkpoint {path} is missing (its trunk run saves it); "
                              f"start fresh with --no-resume") from None
    except Exception as err:
        raise CheckpointError(f"cooldown branch checkpoint {path} cannot be read ({type(err).__name__})") from None
    state["path"] = str(path)
    return state


def load_latest(folder: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of one arm and seed (a corrupt newest one falls back to older)."""
    for path in reversed(checkpoints_in(folder)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or corrupt: try the previous one
            continue
        if state.get("version") == CHECKPOINT_VERSION:
            state["path"] = str(path)
            return state
    return None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
