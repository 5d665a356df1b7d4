"""Experiment configuration: typed dataclasses, loaded from YAML and validated before anything runs.

One experiment YAML holds shared sections (`model`, `train`, `optim`) and a mapping of `arms`; each arm
inherits the shared sections and overrides keys of them. Every error names the key path
(`arms.ngpt.optim.lr: ...`) and is raised as `ConfigError`, which the runner turns into one line on
stderr and exit code 2.

The defaults live in the dataclasses below (and, for the model, in `models.config.ModelConfig`): they
are the single source of truth, documented next to each field.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.config import ModelConfig


class ConfigError(ValueError):
    """A bad experiment configuration; the message starts with the offending key path."""


@dataclass
class HFDataConfig:
    """`data.hf`: a Hugging Face `datasets` dataset, streamed and tokenized into uint16 shards on first use.

    The shards go to `$DATGPT_DATA_DIR/shards/<name>-<hash>` (default `~/.cache/datgpt`), keyed by a hash
    of every field below, so experiments with the same settings share one prepared copy.
    """

    name: str = ""  # Hub dataset (e.g. HuggingFaceFW/fineweb) or a datasets builder (parquet, json, text)
    config: str | None = None  # dataset configuration, e.g. sample-10BT; null = the dataset's default
    split: str = "train"  # split to stream; validation documents are taken from its start
    data_files: list[str] | None = None  # files for a builder such as parquet or json (local paths or URLs)
    text_field: str = "text"  # the record field holding each document's text
    max_tokens: int | None = None  # stop after this many tokens in all (validation included); null = all
    val_tokens: int = 1_000_000  # validation: whole documents from the start until at least this many tokens
    shard_tokens: int = 100_000_000  # tokens per shard file (2 bytes each)


@dataclass
class DataConfig:
    """The corpus: one of `dataset` (built-in), `path` (a local text file), `shards` (a prepared folder)
    or `hf` (a Hugging Face dataset prepared on first use); `shards`, `hf` and `path` replace `dataset`."""

    dataset: str = "verdict"  # built-in corpus: "verdict" (The Verdict) or "tinyshakespeare"
    path: str | None = None  # a local UTF-8 text file; when set it replaces `dataset`
    val_fraction: float = 0.1  # text corpora (dataset, path): last fraction of the tokens held out as validation
    shards: str | None = None  # a folder written by `python -m training.data prepare` (val and train shards)
    hf: HFDataConfig | None = None  # a Hugging Face dataset, tokenized into cached shards on first use


DATA_SOURCE_KEYS = ("path", "shards", "hf")  # at most one of these; each replaces data.dataset


def _build_data(raw: Any) -> DataConfig:
    """`data` with its nested `hf` section (`hf: NAME` is short for `hf: {name: NAME}`)."""
    if not isinstance(raw, dict) or raw.get("hf") is None:
        return _build(DataConfig, raw, "data")
    raw = dict(raw)
    hf_raw = raw.pop("hf")
    if isinstance(hf_raw, str):
        hf_raw = {"name": hf_raw}
    data = _build(DataConfig, raw, "data")
    data.hf = _build(HFDataConfig, hf_raw, "data.hf")
    hf = data.hf
    if not hf.name.strip():
        raise ConfigError("data.hf.name: required, a dataset name such as HuggingFaceFW/fineweb")
    if not hf.split.strip():
        raise ConfigError("data.hf.split: must be a split name such as train")
    if not hf.text_field.strip():
        raise ConfigError("data.hf.text_field: must be a field name such as text")
    if hf.data_files is not None and not hf.data_files:
        raise ConfigError("data.hf.data_files: give at least one file, or null")
    for key in ("val_tokens", "shard_tokens"):
        _positive(f"data.hf.{key}", getattr(hf, key))
    if hf.max_tokens is not None and hf.max_tokens <= hf.val_tokens:
        raise ConfigError(f"data.hf.max_tokens: {hf.max_tokens} leaves no training tokens after "
                          f"data.hf.val_tokens={hf.val_tokens}")
    return data


@dataclass
class TrainConfig:
    tokens: int = 2_000_000  # training budget in tokens (rounded down to whole optimizer steps)
    micro_batch_size: int = 8  # sequences per forward pass on each process
    grad_accum_steps: int = 1  # micro-batches per optimizer step, summed over all processes
    eval_every_tokens: int = 50_000  # evaluate validation loss every this many training tokens
    eval_tokens: int = 20_000  # validation tokens per evaluation (the same fixed tokens every time)
    log_every_steps: int = 1  # log training metrics every this many optimizer steps
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 disables clipping
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32"
    compile: str = "auto"  # torch.compile: "auto" (on for CUDA), "on" or "off"
    device: str = "auto"  # "auto" (CUDA when available), "cuda" or "cpu"
    peak_flops: float | None = None  # accelerator peak FLOP/s for MFU; None measures a bf16 matmul on CUDA


@dataclass
class OptimConfig:
    lr: float = 6.0e-4  # peak learning rate of AdamW
    weight_decay: float = 0.1  # decoupled weight decay on the groups the model marks for decay
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1.0e-8
    warmup_tokens: int = 0  # linear warmup from 0 to lr over this many tokens
    schedule: str = "cosine"  # after warmup: "cosine", "linear", "wsd" (warmup-stable-decay) or "constant"
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine, linear, wsd)
    decay_fraction: float = 0.2  # wsd only: the last fraction of tokens over which lr decays


@dataclass
class TrackingConfig:
    experiment: str | None = None  # MLflow experiment name; None uses the experiment's `name`
    run_name: str | None = None  # name of the parent run; None gives "<name>-<timestamp>"
    log_models: bool = True  # log each child run's final model in MLflow's PyTorch flavour (artifact `model`)
    log_samples: bool = True  # log text sampled from fixed prompts at the end of each child run (samples/samples.txt)
    log_diagnostics: bool = True  # hypersphere diagnostics (norms, condition numbers, nGPT scalars) at every
    # evaluation: a few diag.* summary metrics and the per-layer table diagnostics/step_XXXXXXXX.json; the final
    # distributions as diagnostics/final.json (training/diagnostics.py)


@dataclass
class CheckpointConfig:
    enabled: bool = True  # write checkpoints: at the end of each run, every `every_tokens`, and on SIGTERM/SIGINT
    dir: str = "checkpoints"  # folder (relative to where the runner starts): <dir>/<experiment>/<parent run>/<arm>-seed<seed>/
    every_tokens: int = 0  # also checkpoint every this many training tokens; 0 = only at the end and on preemption
    keep_last: int = 2  # checkpoints kept per arm and seed (older ones are deleted)


@dataclass
class EvalConfig:
    """`eval`: downstream accuracy through lm-evaluation-harness while training (training/downstream.py;
    needs `pip install -e ".[eval]"`). Every arm and seed is evaluated by the same rule as
    `train.eval_every_tokens`, so arms with the same tokens per step are evaluated at the same token
    counts; the metrics go to the child run as `eval/<task>/<metric>`. Off unless `tasks` is set."""

    tasks: list[str] = field(default_factory=list)  # lm-eval task names or tags, e.g. [verdict_lambada, arc_easy]; [] = off
    every_tokens: int = 0  # evaluate at step 0, every this many training tokens and at the end; 0 = at the end only
    limit: int | None = None  # at most this many documents per task (lm-eval's --limit); null = all
    batch_size: int = 16  # sequences per forward pass of the evaluation

    @property
    def active(self) -> bool:
        return bool(self.tasks)


def _build_eval(raw: Any) -> EvalConfig:
    cfg = _build(EvalConfig, raw, "eval")
    for i, task in enumerate(cfg.tasks):
        if not task.strip() or task != task.strip() or "," in task:
            raise ConfigError(f"eval.tasks[{i}]: {task!r} is not an lm-eval task name")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError(f"eval.tasks: duplicate tasks in {cfg.tasks}")
    _positive("eval.every_tokens", cfg.every_tokens, allow_zero=True)
    if cfg.limit is not None:
        _positive("eval.limit", cfg.limit)
    _positive("eval.batch_size", cfg.batch_size)
    return cfg


SWEEP_METHODS = ("full", "cooldown", "both")


@dataclass
class SweepConfig:
    """`sweep`: one invocation trains a grid of runs per arm (training/sweep.py expands it).

    Every (arm, budget, learning rate, seed) is its own MLflow child run under the invocation's parent
    run. With an `lr` grid the runner first trains the grid at `lr_budget` with `lr_seeds`, picks each
    arm's learning rate with the lowest mean final validation loss, then trains every budget and seed
    with it (grid runs that coincide with those are not trained twice).
    """

    budgets: list[int] | None = None  # train.tokens values, each a run with its own full schedule; null = train.tokens
    method: str = "full"  # full: a run per budget; cooldown: one WSD run of the largest budget, the
    # others as cooldown branches from its checkpoints; both: the two side by side (compared in the report)
    lr: dict[str, list[float]] = field(default_factory=dict)  # arm -> learning-rate grid (arms without one keep optim.lr)
    lr_budget: int | str | None = None  # budget the grid is searched at: one of `budgets`, "each" (per budget), null = smallest
    lr_seeds: list[int] | None = None  # seeds of the grid search; null = the first seed

    @property
    def active(self) -> bool:
        return bool(self.budgets) or bool(self.lr) or self.method != "full"


@dataclass
class ArmConfig:
    """One fully resolved arm: the shared sections with the arm's overrides applied."""

    name: str
    model: ModelConfig
    train: TrainConfig
    optim: OptimConfig
    # start from these weights instead of a fresh init (fresh optimizer and schedule): a checkpoint file,
    # an arm's checkpoint folder, EXPERIMENT/ARM[-seedN] under checkpoint.dir, or an MLflow child run id.
    # Resolved when the run starts (training/pretrained.py), not when the YAML is loaded.
    init_from: str | None = None
    enabled: bool = True  # false: defined (and validated) but trained only when named by --arms

    def tokens_per_step(self) -> int:
        return self.train.micro_batch_size * self.train.grad_accum_steps * self.model.context_length

    def steps(self) -> int:
        return self.train.tokens // self.tokens_per_step()


@dataclass
class ExperimentConfig:
    name: str
    arms: list[ArmConfig]
    seeds: list[int] = field(default_factory=lambda: [0])
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: str = "gpt2"
    targets: list[float] = field(default_factory=list)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # downstream accuracy while training (off by default)
    baseline: str | None = None  # the arm speedups are measured against; None = the first plain GPT arm
    source: str = ""  # the YAML file it was loaded from

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def baseline_arm(self) -> str:
        """The arm speedups are measured against: `baseline`, else the first arm whose model is a GPT."""
        if self.baseline is not None and any(a.name == self.baseline for a in self.arms):
            return self.baseline
        for arm in self.arms:
            if arm.model.kind == "gpt":
                return arm.name
        return self.arms[0].name

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (what is logged and hashed)."""
        return {
            "name": self.name,
            "seeds": list(self.seeds),
            "data": dataclasses.asdict(self.data),
            "tokenizer": self.tokenizer,
            "targets": list(self.targets),
            "tracking": dataclasses.asdict(self.tracking),
            "checkpoint": dataclasses.asdict(self.checkpoint),
            "arms": {a.name: arm_to_dict(a) for a in self.arms},
            **({"sweep": dataclasses.asdict(self.sweep)} if self.sweep.active else {}),
            **({"eval": dataclasses.asdict(self.eval)} if self.eval.active else {}),
            **({"baseline": self.baseline} if self.baseline is not None else {}),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def config_hash(self) -> str:
        return _hash(self.to_dict())

    def arm_hash(self, arm: ArmConfig, seed: int) -> str:
        """What decides one arm's training curve: a checkpoint is resumed only under the same hash."""
        return _hash({"data": dataclasses.asdict(self.data), "tokenizer": self.tokenizer,
                      "arm": arm_to_dict(arm), "seed": seed})


def _hash(tree: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def arm_to_dict(arm: ArmConfig) -> dict[str, Any]:
    """The arm as plain data (logged as params and hashed). `init_from` appears only when set, so
    the hashes of arms without it are the ones they had before the key existed."""
    out = {
        "model": dataclasses.asdict(arm.model),
        "train": dataclasses.asdict(arm.train),
        "optim": dataclasses.asdict(arm.optim),
    }
    if arm.init_from is not None:
        out["init_from"] = arm.init_from
    return out


def local_accum_steps(grad_accum_steps: int, world_size: int, *, arm: str | None = None,
                      processes: str | None = None) -> int:
    """The micro-batches each of `world_size` processes runs per optimizer step.

    Tokens per step are fixed by the YAML (micro_batch_size x grad_accum_steps x context_length), whatever
    the number of processes, so `grad_accum_steps` must split evenly over them. The one check of this
    (runner before a torchrun launch and in a dry run, session, trainer, data); `processes` names them in the
    message (default "the N processes")."""
    if grad_accum_steps % world_size:
        raise ConfigError(f"train.grad_accum_steps: {grad_accum_steps}{f' (arm {arm})' if arm else ''} is not "
                          f"divisible by {processes or f'the {world_size} processes'}; each process runs "
                          f"grad_accum_steps / N micro-batches, so tokens per step stay the YAML's")
    return grad_accum_steps // world_size


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the form MLflow params take."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


# ----------------------------------------------------------------------------- typed conversion

SHARED_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "optim": OptimConfig}
ARM_KEYS = (*SHARED_SECTIONS, "init_from", "enabled")  # what an arm may set
TOP_LEVEL_KEYS = {"name", "seeds", "data", "tokenizer", "model", "train", "optim", "arms", "targets", "tracking",
                  "checkpoint", "sweep", "baseline", "eval"}
CHOICES = {
    "train.precision": ("auto", "bf16", "fp32"),
    "train.compile": ("auto", "on", "off"),
    "train.device": ("auto", "cuda", "cpu"),
    "optim.schedule": ("cosine", "linear", "wsd", "constant"),
    "sweep.method": SWEEP_METHODS,
}
TOKENIZERS = ("gpt2",)
TOKENIZER_VOCAB = {"gpt2": 50257}  # token ids the model must be able to embed
BUILTIN_DATASETS = ("verdict", "tinyshakespeare")


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key path."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp in (int, float):
        number = value
        if isinstance(value, str):  # YAML reads 1e6 and 2_000_000 as strings in some spellings
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        if tp is int:
            if float(number) != int(number):
                raise ConfigError(f"{path}: expected an integer, got {value!r}")
            return int(number)
        return float(number)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and path.endswith(".compile"):  # `compile: true` reads naturally
            return "on" if value else "off"
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(names)})"
            raise ConfigError(f"{path}.{key}: unknown key{hint}")
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}")
    for key, value in kwargs.items():
        choices = CHOICES.get(f"{path.split('.')[-1]}.{key}")
        if choices and value not in choices:
            raise ConfigError(f"{path}.{key}: must be one of {', '.join(choices)}; got {value!r}")
    try:
        return cls(**kwargs)
    except ValueError as err:  # ModelConfig validates itself; its messages start with the field
        field_name, sep, rest = str(err).partition(":")
        if sep and field_name.strip() in names:
            raise ConfigError(f"{path}.{field_name.strip()}:{rest}") from None
        raise ConfigError(f"{path}: {err}") from None


def _positive(path: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{path}: must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")


def _validate_arm(arm: ArmConfig, prefix: str) -> None:
    t, o = arm.train, arm.optim
    for key in ("tokens", "micro_batch_size", "grad_accum_steps", "eval_every_tokens", "eval_tokens",
                "log_every_steps"):
        _positive(f"{prefix('train', key)}", getattr(t, key))
    _positive(prefix("train", "grad_clip"), t.grad_clip, allow_zero=True)
    if t.peak_flops is not None:
        _positive(prefix("train", "peak_flops"), t.peak_flops)
    _positive(prefix("optim", "lr"), o.lr)
    for key in ("weight_decay", "warmup_tokens", "min_lr_ratio"):
        _positive(prefix("optim", key), getattr(o, key), allow_zero=True)
    _positive(prefix("optim", "eps"), o.eps)
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(o, key) < 1:
            raise ConfigError(f"{prefix('optim', key)}: must be in [0, 1), got {getattr(o, key)!r}")
    if o.min_lr_ratio > 1:
        raise ConfigError(f"{prefix('optim', 'min_lr_ratio')}: must be at most 1, got {o.min_lr_ratio!r}")
    if not 0 < o.decay_fraction <= 1:
        raise ConfigError(f"{prefix('optim', 'decay_fraction')}: must be in (0, 1], got {o.decay_fraction!r}")
    if arm.steps() < 1:
        raise ConfigError(
            f"{prefix('train', 'tokens')}: {t.tokens} tokens is less than one optimizer step of "
            f"{arm.tokens_per_step()} tokens (micro_batch_size x grad_accum_steps x context_length)")
    if o.warmup_tokens >= t.tokens:
        raise ConfigError(f"{prefix('optim', 'warmup_tokens')}: {o.warmup_tokens} must be less than "
                          f"train.tokens={t.tokens}")


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.tokens=1e6` -> (["train", "tokens"], 1000000.0); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY.PATH=VALUE")
    key, _, raw_value = text.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set {text}: expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the document must be a mapping of keys (name, arms, ...), "
                          f"got {type(raw).__name__}")
    return raw


def build_experiment(raw: dict, source: str = "") -> ExperimentConfig:
    """Validate a raw mapping (YAML with overrides applied) into an ExperimentConfig."""
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), sorted(TOP_LEVEL_KEYS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{key}: unknown key{hint}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("name: required, a non-empty string naming the experiment")
    seeds = _convert(raw.get("seeds", [0]), list[int], "seeds")
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: duplicate seeds in {seeds}")
    targets = _convert(raw.get("targets", []), list[float], "targets")
    if any(t <= 0 for t in targets):
        raise ConfigError(f"targets: target losses must be positive, got {targets}")
    data = _build_data(raw.get("data"))
    chosen = [key for key in DATA_SOURCE_KEYS if getattr(data, key) is not None]
    if len(chosen) > 1:
        raise ConfigError(f"data.{chosen[1]}: set only one of data.{', data.'.join(DATA_SOURCE_KEYS)} "
                          f"(data.{chosen[0]} is set too)")
    if data.shards is not None and not data.shards.strip():
        raise ConfigError("data.shards: must be a folder path, or null")
    if not chosen and data.dataset not in BUILTIN_DATASETS:
        raise ConfigError(f"data.dataset: unknown corpus {data.dataset!r}; built-in: "
                          f"{', '.join(BUILTIN_DATASETS)} (or set data.path, data.shards or data.hf)")
    if not 0 < data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction: must be between 0 and 1, got {data.val_fraction!r}")
    tokenizer = _convert(raw.get("tokenizer", "gpt2"), str, "tokenizer")
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"tokenizer: must be one of {', '.join(TOKENIZERS)}; got {tokenizer!r}")
    tracking = _build(TrackingConfig, raw.get("tracking"), "tracking")
    checkpoint = _build(CheckpointConfig, raw.get("checkpoint"), "checkpoint")
    _positive("checkpoint.every_tokens", checkpoint.every_tokens, allow_zero=True)
    _positive("checkpoint.keep_last", checkpoint.keep_last)
    if not checkpoint.dir.strip():
        raise ConfigError("checkpoint.dir: must be a folder path, got an empty string")

    shared = {}
    for section in SHARED_SECTIONS:
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{section}: expected a mapping of keys, got {value!r}")
        shared[section] = value
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise ConfigError("arms: required, a mapping of arm name to overrides, e.g. "
                          "{gpt: {model: {kind: gpt}}, ngpt: {model: {kind: ngpt}}}")
    arms = []
    for arm_name, arm_raw in arms_raw.items():
        if not isinstance(arm_name, str) or not arm_name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"arms.{arm_name}: arm names must be letters, digits, '_' or '-'")
        arm_raw = arm_raw or {}
        if not isinstance(arm_raw, dict):
            raise ConfigError(f"arms.{arm_name}: expected a mapping with model/train/optim, got {arm_raw!r}")
        for key in arm_raw:
            if key not in ARM_KEYS:
                raise ConfigError(f"arms.{arm_name}.{key}: unknown key (an arm sets only "
                                  f"{', '.join(ARM_KEYS)})")
        init_from = _convert(arm_raw.get("init_from"), str | None, f"arms.{arm_name}.init_from")
        enabled = _convert(arm_raw.get("enabled", True), bool, f"arms.{arm_name}.enabled")
        if init_from is not None and not init_from.strip():
            raise ConfigError(f"arms.{arm_name}.init_from: must be a checkpoint path, EXPERIMENT/ARM or an "
                              f"MLflow run id, or null")

        def path_of(section: str, key: str, _arm=arm_name, _raw=arm_raw) -> str:
            own = isinstance(_raw.get(section), dict) and key in _raw[section]
            return f"arms.{_arm}.{section}.{key}" if own else f"{section}.{key}"

        built = {}
        for section, cls in SHARED_SECTIONS.items():
            override = arm_raw.get(section) or {}
            if not isinstance(override, dict):
                raise ConfigError(f"arms.{arm_name}.{section}: expected a mapping of keys, got {override!r}")
            merged = _merge(shared[section], override)
            try:
                built[section] = _build(cls, merged, section)
            except ConfigError as err:  # re-point the path at the arm when the arm set the key
                key_path, _, rest = str(err).partition(":")
                parts = key_path.split(".")
                if len(parts) >= 2 and parts[0] == section:
                    key_path = path_of(section, parts[1]) + "".join("." + p for p in parts[2:])
                raise ConfigError(f"{key_path}:{rest}") from None
        arm = ArmConfig(name=arm_name, **built, init_from=init_from.strip() if init_from else None, enabled=enabled)
        if arm.model.vocab_size < TOKENIZER_VOCAB[tokenizer]:
            raise ConfigError(f"{path_of('model', 'vocab_size')}: {arm.model.vocab_size} is smaller than the "
                              f"{tokenizer} tokenizer's {TOKENIZER_VOCAB[tokenizer]} tokens")
        _validate_arm(arm, path_of)
        arms.append(arm)
    baseline = _convert(raw.get("baseline"), str | None, "baseline")
    if baseline is not None and baseline not in arms_raw:
        raise ConfigError(f"baseline: {baseline!r} is not an arm{_did_you_mean(baseline, list(arms_raw))}")
    sweep = _build_sweep(raw.get("sweep"), arms, seeds, checkpoint)
    eval_cfg = _build_eval(raw.get("eval"))
    return ExperimentConfig(name=name.strip(), arms=arms, seeds=seeds, data=data, tokenizer=tokenizer,
                            targets=targets, tracking=tracking, checkpoint=checkpoint, sweep=sweep,
                            eval=eval_cfg, baseline=baseline, source=source)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]}?)" if close else f" (arms: {', '.join(map(str, choices))})"


def _build_sweep(raw: Any, arms: list[ArmConfig], seeds: list[int], checkpoint: CheckpointConfig) -> SweepConfig:
    """`sweep`, checked against the arms: every budget must be trainable by every arm."""
    if raw is None:
        return SweepConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep: expected a mapping of keys (budgets, method, lr, lr_budget, lr_seeds), got {raw!r}")
    raw = dict(raw)
    lr_raw = raw.pop("lr", None)
    lr_budget_raw = raw.pop("lr_budget", None)
    sweep = _build(SweepConfig, raw, "sweep")
    names = [a.name for a in arms]
    if sweep.budgets is not None:
        if not sweep.budgets:
            raise ConfigError("sweep.budgets: give at least one token budget, or null")
        if len(set(sweep.budgets)) != len(sweep.budgets):
            raise ConfigError(f"sweep.budgets: duplicate budgets in {sweep.budgets}")
        sweep.budgets = sorted(sweep.budgets)
        for budget in sweep.budgets:
            _positive("sweep.budgets", budget)
            for arm in arms:
                steps = budget // arm.tokens_per_step()
                if steps < 1:
                    raise ConfigError(f"sweep.budgets: {budget} tokens is less than one optimizer step of arm "
                                      f"{arm.name} ({arm.tokens_per_step()} tokens)")
                if arm.optim.warmup_tokens >= budget:
                    raise ConfigError(f"sweep.budgets: {budget} tokens is within arm {arm.name}'s "
                                      f"optim.warmup_tokens={arm.optim.warmup_tokens}")
    if lr_raw is not None:
        if not isinstance(lr_raw, dict):
            raise ConfigError(f"sweep.lr: expected a mapping of arm name to a list of learning rates, got {lr_raw!r}")
        for arm_name, grid in lr_raw.items():
            if arm_name not in names:
                raise ConfigError(f"sweep.lr.{arm_name}: not an arm{_did_you_mean(arm_name, names)}")
            values = _convert(grid, list[float], f"sweep.lr.{arm_name}")
            if not values:
                raise ConfigError(f"sweep.lr.{arm_name}: give at least one learning rate")
            if any(v <= 0 for v in values):
                raise ConfigError(f"sweep.lr.{arm_name}: learning rates must be positive, got {values}")
            if len(set(values)) != len(values):
                raise ConfigError(f"sweep.lr.{arm_name}: duplicate learning rates in {values}")
            sweep.lr[arm_name] = sorted(values)
    budgets = sweep.budgets
    if lr_budget_raw is not None:
        if lr_budget_raw == "each":
            sweep.lr_budget = "each"
        else:
            value = _convert(lr_budget_raw, int, "sweep.lr_budget")
            choices = budgets or sorted({a.train.tokens for a in arms})
            if value not in choices:
                raise ConfigError(f"sweep.lr_budget: {value} is not one of the budgets {choices} "
                                  f"(or use \"each\" to search at every budget)")
            sweep.lr_budget = value
    if sweep.lr_seeds is not None:
        if not sweep.lr_seeds:
            raise ConfigError("sweep.lr_seeds: give at least one seed, or null (the first seed)")
        missing = [s for s in sweep.lr_seeds if s not in seeds]
        if missing:
            raise ConfigError(f"sweep.lr_seeds: seed {missing[0]} is not in seeds {seeds}")
    if (sweep.lr_budget is not None or sweep.lr_seeds is not None) and not sweep.lr:
        raise ConfigError("sweep.lr: lr_budget and lr_seeds need a learning-rate grid, e.g. sweep.lr.gpt: [3e-4, 6e-4]")
    if sweep.method != "full":
        if not checkpoint.enabled:
            raise ConfigError(f"sweep.method: {sweep.method} branches the cooldowns from checkpoints; "
                              f"set checkpoint.enabled: true")
        for arm in arms:
            if arm.init_from is not None:
                raise ConfigError(f"sweep.method: {sweep.method} is not supported with arms.{arm.name}.init_from")
    return sweep


def load_experiment(path: str | Path, overrides: list[str] = (), arms: list[str] | None = None,
                    seeds: list[int] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment YAML. Raises ConfigError on any problem."""
    raw = apply_overrides(read_yaml(path), list(overrides))
    cfg = build_experiment(raw, source=str(path))
    if arms:
        known = [a.name for a in cfg.arms]
        unknown = [a for a in arms if a not in known]
        if unknown:
            raise ConfigError(f"--arms: unknown arm {unknown[0]!r}; this experiment has {', '.join(known)}")
        cfg.arms = [a for a in cfg.arms if a.name in arms]
    else:
        cfg.arms = [a for a in cfg.arms if a.enabled]
        if not cfg.arms:
            raise ConfigError("arms: every arm has enabled: false; name the arms to train with --arms")
    if seeds:
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"--seeds: duplicate seeds in {seeds}")
        cfg.seeds = list(seeds)
    return cfg
