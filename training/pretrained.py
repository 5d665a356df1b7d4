"""Finding pretrained weights: `arms.X.init_from` (fine-tuning) and `python -m training.sample`.

A *spec* names a checkpoint in one of four forms, tried in this order:

1. a checkpoint file, `.../step_00000080.pt`: that checkpoint;
2. a folder: an arm's checkpoint folder (`.../<arm>-seed<seed>/`) gives its newest checkpoint; an
   invocation folder (`.../<experiment>/<parent run id>/`, the one holding `invocation.json`) gives the
   newest checkpoint of the arm and seed being trained (`<arm>-seed<seed>/` in it);
3. `EXPERIMENT/ARM` or `EXPERIMENT/ARM-seedN` (not an existing path): the newest *finished* checkpoint
   of that arm, over every invocation under `<checkpoint.dir>/EXPERIMENT/`; without `-seedN` the seed is
   the one being trained (seed s fine-tunes the pretrained seed s);
4. an MLflow run id (32 hex digits): the newest checkpoint whose stored `run_id` is that child run,
   searched under `<checkpoint.dir>/*/*/*/`; failing that, the checkpoint named by the run's
   `datgpt.checkpoint` tag (every child run gets it when it ends), read from the tracking store.

Paths are relative to the working folder, like `checkpoint.dir`. Checkpoints are opened with
`torch.load(weights_only=True, mmap=True)`, so looking at one does not read its tensors.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from analysis import record
from models import build_model
from models.config import ModelConfig
from training.checkpoint import CHECKPOINT_VERSION, checkpoints_in


RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_EXPERIMENT_ARM = re.compile(r"^(?P<experiment>[^/\\]+)/(?P<arm>[A-Za-z0-9_-]+?)(?:-seed(?P<seed>\d+))?/?$")

# Model fields that do not change what the weights compute: `context_length` only sizes the rotary
# table (fine-tuning at another context length is allowed), `init_std` only the GPT's initialization.
_IGNORED = {"context_length", "init_std"}
_GPT_ONLY = {"qk_norm", "init_std", "norm_eps"}
_NGPT_ONLY = {"alpha_attn_init", "alpha_attn_scale", "alpha_mlp_init", "alpha_mlp_scale", "s_qk_init",
              "s_qk_scale", "s_u_init", "s_u_scale", "s_v_init", "s_v_scale", "s_z_init", "s_z_scale",
              "ngpt_eps"}


class PretrainedError(ValueError):
    """A spec that names no usable checkpoint, or a checkpoint whose model does not fit; one line."""


@dataclass
class Pretrained:
    """A resolved checkpoint: where it is and what wrote it (its tensors are not read)."""

    spec: str
    path: Path
    step: int
    tokens: int
    finished: bool
    run_id: str | None
    parent_run_id: str | None
    arm: str | None
    seed: int | None
    model_config: dict[str, Any] | None  # None for checkpoints written before it was stored
    tokenizer: str = "gpt2"  # what its token ids mean (checkpoints written before it was stored: gpt2)

    def tags(self) -> dict[str, str]:
        """The lineage tags of a run initialized from this checkpoint."""
        tags = {record.TAG_INIT_FROM: self.spec, record.TAG_INIT_CHECKPOINT: str(self.path), record.TAG_INIT_STEP: str(self.step),
                record.TAG_INIT_TOKENS: str(self.tokens)}
        if self.run_id:
            tags[record.TAG_INIT_RUN_ID] = self.run_id
        if self.parent_run_id:
            tags[record.TAG_INIT_PARENT_RUN_ID] = self.parent_run_id
        return tags

    def state(self) -> dict[str, Any]:
        """The whole checkpoint, memory-mapped."""
        return _read(self.path)

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's state dict (memory-mapped: copied into a model by `load_state_dict`)."""
        return self.state()["model"]

    def config(self) -> ModelConfig:
        """The checkpoint's model config (a `PretrainedError` for checkpoints that predate it)."""
        if self.model_config is None:
            raise PretrainedError(f"{self.path} was written before checkpoints stored their model config; "
                                  f"use a checkpoint written by this version")
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        try:
            return ModelConfig(**{k: v for k, v in self.model_config.items() if k in known})
        except (TypeError, ValueError) as err:
            raise PretrainedError(f"{self.path}: invalid model config in the checkpoint ({err})") from None

    def build_model(self) -> torch.nn.Module:
        """The checkpoint's model, with its weights, on the CPU in float32."""
        model = build_model(self.config())
        model.load_state_dict(self.weights())
        return model


def _read(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated, not a torch file, unsafe pickle, ...
        raise PretrainedError(f"{path}: not a readable datgpt checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "model" not in state:
        raise PretrainedError(f"{path}: not a datgpt checkpoint (no model state of version {CHECKPOINT_VERSION})")
    return state


def _describe(spec: str, path: Path) -> Pretrained:
    state = _read(path)
    return Pretrained(spec=spec, path=path.resolve(), step=int(state.get("step", 0)),
                      tokens=int(state.get("tokens", 0)), finished=bool(state.get("finished", False)),
                      run_id=state.get("run_id"), parent_run_id=state.get("parent_run_id"), arm=state.get("arm"),
                      seed=state.get("seed"), model_config=state.get("model_config"),
                      tokenizer=state.get("tokenizer", "gpt2"))


def _newest(spec: str, folder: Path, finished_only: bool = False) -> Pretrained | None:
    """The newest readable (and, if asked, finished) checkpoint in an arm folder."""
    for path in reversed(checkpoints_in(folder)):
        try:
            found = _describe(spec, path)
        except PretrainedError:
            continue  # a corrupt newest file: fall back to the previous one, as resume does
        if found.finished or not finished_only:
            return found
    return None


def resolve(spec: str, checkpoint_dir: str | Path, arm: str | None = None, seed: int | None = None) -> Pretrained:
    """The checkpoint `spec` names (see the module docstring); `arm` and `seed` are those being trained,
    used by an invocation folder and by `EXPERIMENT/ARM` without a seed. Raises `PretrainedError`."""
    spec = spec.strip()
    path = Path(spec).expanduser()
    checkpoint_dir = Path(checkpoint_dir)
    if path.is_file():
        return _describe(spec, path)
    if path.is_dir():
        folder = path
        if (path / "invocation.json").is_file():
            if arm is None or seed is None:
                raise PretrainedError(f"{spec} is an invocation folder; name one of its arm folders "
                                      f"({', '.join(sorted(p.name for p in path.iterdir() if p.is_dir())) or 'none'})")
            folder = path / f"{arm}-seed{seed}"
        found = _newest(spec, folder)
        if found is None:
            raise PretrainedError(f"no readable checkpoint (step_*.pt) in {folder}")
        return found
    if RUN_ID.match(spec):
        return _from_run_id(spec, checkpoint_dir)
    match = _EXPERIMENT_ARM.match(spec)
    if match:
        want_seed = int(match["seed"]) if match["seed"] is not None else seed
        if want_seed is None:
            raise PretrainedError(f"{spec}: say which seed, e.g. {match['experiment']}/{match['arm']}-seed0")
        return _from_experiment(spec, checkpoint_dir, match["experiment"], match["arm"], want_seed)
    raise PretrainedError(f"{spec}: no such file or folder, and not EXPERIMENT/ARM[-seedN] or an MLflow run id")


def _from_experiment(spec: str, checkpoint_dir: Path, experiment: str, arm: str, seed: int) -> Pretrained:
    root = checkpoint_dir / experiment
    if not root.is_dir():
        raise PretrainedError(f"{spec}: no checkpoints of experiment {experiment!r} under {checkpoint_dir}/ "
                              f"(train it first, or give a checkpoint path)")
    candidates = [found for folder in root.glob(f"*/{arm}-seed{seed}")
                  if (found := _newest(spec, folder, finished_only=True)) is not None]
    if not candidates:
        raise PretrainedError(f"{spec}: no finished checkpoint of arm {arm!r} seed {seed} under "
                              f"{root}/*/{arm}-seed{seed}/")
    return max(candidates, key=lambda p: p.path.stat().st_mtime)


def _from_run_id(run_id: str, checkpoint_dir: Path) -> Pretrained:
    # Every checkpoint of one arm folder belongs to the same child run: look at the newest of each.
    if checkpoint_dir.is_dir():
        for folder in sorted({p.parent for p in checkpoint_dir.glob("*/*/*/step_*.pt")}):
            newest = _newest(run_id, folder)
            if newest is not None and newest.run_id == run_id:
                return newest
    tagged = _tagged_checkpoint(run_id)
    if tagged is None:
        raise PretrainedError(f"{run_id}: no checkpoint of this MLflow run under {checkpoint_dir}/ and no "
                              f"{record.TAG_CHECKPOINT} tag on it in the tracking store")
    path = Path(tagged)
    found = _describe(run_id, path) if path.is_file() else _newest(run_id, path.parent)
    if found is None:
        raise PretrainedError(f"{run_id}: the run's checkpoint {tagged} no longer exists")
    return found


def _tagged_checkpoint(run_id: str) -> str | None:
    """The `datgpt.checkpoint` tag of an MLflow run, or None (no such run, no store, no tag)."""
    try:
        import mlflow
        from mlflow import MlflowClient

        from analysis.errors import TrackingStoreError
        from analysis.store import check_local_store

        uri = mlflow.get_tracking_uri()
        try:
            check_local_store(uri)  # never create an empty store just to look a run up
        except TrackingStoreError:
            return None
        return MlflowClient(uri).get_run(run_id).data.tags.get(record.TAG_CHECKPOINT)
    except Exception:  # unknown run, unreachable server: the caller reports the run as not found
        return None


def _comparable(config: ModelConfig) -> dict[str, Any]:
    """The fields that decide what a model's weights compute, with defaults resolved."""
    values = dataclasses.asdict(config)
    values["mlp_hidden"] = config.hidden_dim
    for name in ("alpha_attn", "alpha_mlp", "s_qk", "s_u", "s_v", "s_z"):
        values[f"{name}_scale"] = config.resolved_scale(name)
    other_kind = _NGPT_ONLY if config.kind == "gpt" else _GPT_ONLY
    return {k: v for k, v in values.items() if k not in _IGNORED and k not in other_kind}


def check_model(pretrained: Pretrained, config: ModelConfig) -> None:
    """Raise `PretrainedError` unless the checkpoint's model is the one `config` builds (every field but
    `context_length` and `init_std`, and the state dict's names and shapes)."""
    if pretrained.model_config is not None:
        theirs, mine = _comparable(pretrained.config()), _comparable(config)
        diffs = [k for k in mine if theirs.get(k) != mine[k]]
        if diffs:
            listed = ", ".join(f"{k} {theirs.get(k)!r} vs {mine[k]!r}" for k in diffs[:4])
            raise PretrainedError(f"{pretrained.path} holds another model (checkpoint vs this arm: {listed}); "
                                  f"set this arm's model keys to the checkpoint's")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in pretrained.weights().items()}
    if found != expected:
        missing = [k for k in expected if k not in found]  # in the model's own order: the embedding first
        extra = [k for k in found if k not in expected]
        shaped = [k for k in expected if k in found and found[k] != expected[k]]
        what = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                f"{shaped[0]} is {list(found[shaped[0]])}, this arm needs {list(expected[shaped[0]])}")
        raise PretrainedError(f"{pretrained.path} holds another model ({what}); set this arm's model keys to "
                              f"the checkpoint's")
