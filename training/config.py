"""Experiment configuration: typed dataclasses, loaded from YAML and validated before anything runs.

One experiment YAML holds shared sections (`model`, `train`, `optim`) and a mapping of `arms`; each arm
inherits the shared sections and overrides keys of them. Every error names the key path
(`arms.ngpt.optim.lr: ...`) and is raised as `ConfigError`, which the runner turns into one line on
stderr and exit code 2.

This module is the schema: the sections, their defaults and checks, and what is hashed and logged.
training/experiment.py builds an `ExperimentConfig` from a YAML file; training/typed_yaml.py is the generic
typed conversion with key-path errors under both.

The defaults live in the dataclasses below (and, for the model, in `models.config.ModelConfig`): they
are the single source of truth, documented next to each field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from models.config import ModelConfig
from training.data.tokenizer import N_VOCAB as TOKENIZER_VOCAB  # token ids the model must be able to embed
from training.typed_yaml import ConfigError, build, positive


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


def build_data(raw: Any) -> DataConfig:
    """`data` with its nested `hf` section (`hf: NAME` is short for `hf: {name: NAME}`)."""
    if not isinstance(raw, dict) or raw.get("hf") is None:
        return build(DataConfig, raw, "data", CHOICES)
    raw = dict(raw)
    hf_raw = raw.pop("hf")
    if isinstance(hf_raw, str):
        hf_raw = {"name": hf_raw}
    data = build(DataConfig, raw, "data", CHOICES)
    data.hf = build(HFDataConfig, hf_raw, "data.hf", CHOICES)
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
        positive(f"data.hf.{key}", getattr(hf, key))
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
    eval_windows: str = "first"  # where those windows lie: "first" (consecutive, from the start of the validation
    # split) or "spread" (evenly spaced over the whole validation split); see training/data/corpus.py val_windows
    log_every_steps: int = 1  # log training metrics every this many optimizer steps
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 disables clipping
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32"
    compile: str = "auto"  # torch.compile: "auto" (on for CUDA), "on" or "off"
    device: str = "auto"  # "auto" (CUDA when available), "cuda" or "cpu"
    peak_flops: float | None = None  # accelerator peak FLOP/s for MFU; None measures a bf16 matmul on CUDA


@dataclass
class OptimConfig:
    """`optim`: the optimizer and its learning-rate schedule (training/optim.py builds the optimizer).

    `name: adamw` trains every parameter with AdamW. `name: muon` trains the hidden matrices (attention and
    MLP projections) with Muon and the embeddings, the output head and every vector with AdamW at its own
    rate `adamw_lr`; both rates follow the schedule below. Muon is defined here for GPT only (nGPT: exit 2).
    Defaults and their sources: docs/configuration.md."""

    name: str = "adamw"  # "adamw", or "muon" (Muon for the hidden matrices, AdamW for the rest; GPT only)
    lr: float = 6.0e-4  # peak learning rate: AdamW's, or with muon Muon's (the rate sweep.lr searches)
    weight_decay: float = 0.1  # decoupled weight decay on the groups the model marks for decay (and Muon's matrices)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1.0e-8
    warmup_tokens: int = 0  # linear warmup from 0 to lr over this many tokens
    schedule: str = "cosine"  # after warmup: "cosine", "linear", "wsd" (warmup-stable-decay) or "constant"
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine, linear, wsd)
    decay_fraction: float = 0.2  # wsd only: the last fraction of tokens over which lr decays
    # --- muon only (ignored by adamw arms, and left out of their params and hashes) -------------------------
    adamw_lr: float | None = None  # peak lr of the AdamW part (embeddings, head, vectors); required with muon
    muon_momentum: float = 0.95  # momentum mu of Muon's buffer B <- mu B + (1 - mu) G
    muon_nesterov: bool = True  # orthogonalize (1 - mu) G + mu B instead of B
    muon_ns_steps: int = 5  # Newton-Schulz iterations per orthogonalization
    muon_adjust_lr: str = "match_rms_adamw"  # per-matrix rate: lr x 0.2 sqrt(max(rows, cols)) (match_rms_adamw,
    # Moonshot's: an update of AdamW's RMS) or lr x sqrt(max(1, rows / cols)) (original, Keller Jordan's)


OPTIMIZERS = ("adamw", "muon")
MUON_KEYS = ("adamw_lr", "muon_momentum", "muon_nesterov", "muon_ns_steps", "muon_adjust_lr")  # muon arms only


@dataclass
class TrackingConfig:
    experiment: str | None = None  # MLflow experiment name; None uses the experiment's `name`
    run_name: str | None = None  # name of the parent run; None gives "<name>-<timestamp>"
    log_models: bool = True  # log each child run's final model in MLflow's PyTorch flavour (artifact `model`)
    log_samples: bool = True  # log text sampled from fixed prompts at the end of each child run (samples/samples.txt)
    log_diagnostics: bool = True  # hypersphere diagnostics (norms, condition numbers, nGPT scalars) at every
    # evaluation: a few diag.* summary metrics and the per-layer table diagnostics/step_XXXXXXXX.json; the final
    # distributions as diagnostics/final.json (training/model_diagnostics.py)


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


def build_eval(raw: Any) -> EvalConfig:
    cfg = build(EvalConfig, raw, "eval", CHOICES)
    for i, task in enumerate(cfg.tasks):
        if not task.strip() or task != task.strip() or "," in task:
            raise ConfigError(f"eval.tasks[{i}]: {task!r} is not an lm-eval task name")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError(f"eval.tasks: duplicate tasks in {cfg.tasks}")
    positive("eval.every_tokens", cfg.every_tokens, allow_zero=True)
    if cfg.limit is not None:
        positive("eval.limit", cfg.limit)
    positive("eval.batch_size", cfg.batch_size)
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
    tokenizer: str = "gpt2"  # "gpt2" (tiktoken's BPE, 50,257 ids) or "bytes" (UTF-8 bytes + end-of-document, 257 ids)
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
        tree = self.to_dict()
        return _hash({**tree, "arms": {name: _hashed(arm) for name, arm in tree["arms"].items()}})

    def arm_hash(self, arm: ArmConfig, seed: int) -> str:
        """What decides one arm's training curve: a checkpoint is resumed only under the same hash."""
        return _hash({"data": dataclasses.asdict(self.data), "tokenizer": self.tokenizer,
                      "arm": _hashed(arm_to_dict(arm)), "seed": seed})


def _hash(tree: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def arm_to_dict(arm: ArmConfig) -> dict[str, Any]:
    """The arm as plain data (logged as params and hashed). `init_from` appears only when set, and the
    Muon keys only in a muon arm, so the hashes of arms without them are the ones they had before the keys
    existed (`optim.name: adamw` is left out of hashes by `_hashed`)."""
    optim = dataclasses.asdict(arm.optim)
    if arm.optim.name != "muon":
        for key in MUON_KEYS:
            del optim[key]
    out = {
        "model": dataclasses.asdict(arm.model),
        "train": dataclasses.asdict(arm.train),
        "optim": optim,
    }
    if arm.init_from is not None:
        out["init_from"] = arm.init_from
    return out


def _hashed(arm: dict[str, Any]) -> dict[str, Any]:
    """`arm_to_dict` as hashed: without `optim.name` when it is adamw, the only optimizer before the key
    existed, so checkpoints and invocations of AdamW arms written before it still resume."""
    if arm["optim"].get("name") != "adamw":
        return arm
    return {**arm, "optim": {k: v for k, v in arm["optim"].items() if k != "name"}}


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
    "train.eval_windows": ("first", "spread"),
    "optim.schedule": ("cosine", "linear", "wsd", "constant"),
    "optim.name": OPTIMIZERS,
    "optim.muon_adjust_lr": ("match_rms_adamw", "original"),
    "sweep.method": SWEEP_METHODS,
}
TOKENIZERS = tuple(TOKENIZER_VOCAB)  # training/data/tokenizer.py: gpt2, bytes
BUILTIN_DATASETS = ("verdict", "tinyshakespeare")


def validate_arm(arm: ArmConfig, prefix: str) -> None:
    t, o = arm.train, arm.optim
    for key in ("tokens", "micro_batch_size", "grad_accum_steps", "eval_every_tokens", "eval_tokens",
                "log_every_steps"):
        positive(f"{prefix('train', key)}", getattr(t, key))
    positive(prefix("train", "grad_clip"), t.grad_clip, allow_zero=True)
    if t.peak_flops is not None:
        positive(prefix("train", "peak_flops"), t.peak_flops)
    positive(prefix("optim", "lr"), o.lr)
    for key in ("weight_decay", "warmup_tokens", "min_lr_ratio"):
        positive(prefix("optim", key), getattr(o, key), allow_zero=True)
    positive(prefix("optim", "eps"), o.eps)
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
    if o.name == "muon":
        validate_muon(arm, prefix)


def validate_muon(arm: ArmConfig, prefix) -> None:
    """The keys of a muon arm. Muon is defined for GPT only: nGPT renormalizes every matrix after every
    step, and neither the nGPT paper nor Muon's authors define what an orthogonalized update means there."""
    o = arm.optim
    if arm.model.kind != "gpt":
        raise ConfigError(f"{prefix('optim', 'name')}: muon (arm {arm.name}) trains GPT models only, not "
                          f"{arm.model.kind}: nGPT renormalizes its matrices after every step, and Muon on nGPT "
                          f"is defined by neither paper; use adamw")
    if o.adamw_lr is None:
        raise ConfigError(f"{prefix('optim', 'adamw_lr')}: required with optim.name muon (arm {arm.name}): the "
                          f"peak learning rate of the AdamW part (embeddings, output head, vectors), e.g. the GPT "
                          f"arm's lr")
    positive(prefix("optim", "adamw_lr"), o.adamw_lr)
    if not 0 <= o.muon_momentum < 1:
        raise ConfigError(f"{prefix('optim', 'muon_momentum')}: must be in [0, 1), got {o.muon_momentum!r}")
    if not 1 <= o.muon_ns_steps <= 50:
        raise ConfigError(f"{prefix('optim', 'muon_ns_steps')}: must be 1 to 50, got {o.muon_ns_steps!r}")


