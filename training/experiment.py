"""Loading an experiment: YAML file -> `--set` overrides -> each arm's shared sections merged with its own
-> a validated `ExperimentConfig` (training/config.py holds the schema), or one `ConfigError` naming the key
path. `--arms` and `--seeds` of the runner narrow the result.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from training.config import (ARM_KEYS, BUILTIN_DATASETS, CHOICES, DATA_SOURCE_KEYS, SHARED_SECTIONS, TOKENIZER_VOCAB,
                             TOKENIZERS, TOP_LEVEL_KEYS, ArmConfig, CheckpointConfig, ExperimentConfig, SweepConfig,
                             TrackingConfig, build_data, build_eval, validate_arm)
from training.typed_yaml import (ConfigError, apply_overrides, build, convert, did_you_mean, merge, positive,
                                 read_yaml)


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
    seeds = convert(raw.get("seeds", [0]), list[int], "seeds")
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: duplicate seeds in {seeds}")
    targets = convert(raw.get("targets", []), list[float], "targets")
    if any(t <= 0 for t in targets):
        raise ConfigError(f"targets: target losses must be positive, got {targets}")
    data = build_data(raw.get("data"))
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
    tokenizer = convert(raw.get("tokenizer", "gpt2"), str, "tokenizer")
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"tokenizer: must be one of {', '.join(TOKENIZERS)}; got {tokenizer!r}")
    tracking = build(TrackingConfig, raw.get("tracking"), "tracking", CHOICES)
    checkpoint = build(CheckpointConfig, raw.get("checkpoint"), "checkpoint", CHOICES)
    positive("checkpoint.every_tokens", checkpoint.every_tokens, allow_zero=True)
    positive("checkpoint.keep_last", checkpoint.keep_last)
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
        init_from = convert(arm_raw.get("init_from"), str | None, f"arms.{arm_name}.init_from")
        enabled = convert(arm_raw.get("enabled", True), bool, f"arms.{arm_name}.enabled")
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
            merged = merge(shared[section], override)
            try:
                built[section] = build(cls, merged, section, CHOICES)
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
        validate_arm(arm, path_of)
        arms.append(arm)
    baseline = convert(raw.get("baseline"), str | None, "baseline")
    if baseline is not None and baseline not in arms_raw:
        raise ConfigError(f"baseline: {baseline!r} is not an arm{did_you_mean(baseline, list(arms_raw))}")
    sweep = build_sweep(raw.get("sweep"), arms, seeds, checkpoint)
    eval_cfg = build_eval(raw.get("eval"))
    return ExperimentConfig(name=name.strip(), arms=arms, seeds=seeds, data=data, tokenizer=tokenizer,
                            targets=targets, tracking=tracking, checkpoint=checkpoint, sweep=sweep,
                            eval=eval_cfg, baseline=baseline, source=source)


def build_sweep(raw: Any, arms: list[ArmConfig], seeds: list[int], checkpoint: CheckpointConfig) -> SweepConfig:
    """`sweep`, checked against the arms: every budget must be trainable by every arm."""
    if raw is None:
        return SweepConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep: expected a mapping of keys (budgets, method, lr, lr_budget, lr_seeds), got {raw!r}")
    raw = dict(raw)
    lr_raw = raw.pop("lr", None)
    lr_budget_raw = raw.pop("lr_budget", None)
    sweep = build(SweepConfig, raw, "sweep", CHOICES)
    names = [a.name for a in arms]
    if sweep.budgets is not None:
        if not sweep.budgets:
            raise ConfigError("sweep.budgets: give at least one token budget, or null")
        if len(set(sweep.budgets)) != len(sweep.budgets):
            raise ConfigError(f"sweep.budgets: duplicate budgets in {sweep.budgets}")
        sweep.budgets = sorted(sweep.budgets)
        for budget in sweep.budgets:
            positive("sweep.budgets", budget)
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
                raise ConfigError(f"sweep.lr.{arm_name}: not an arm{did_you_mean(arm_name, names)}")
            values = convert(grid, list[float], f"sweep.lr.{arm_name}")
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
            value = convert(lr_budget_raw, int, "sweep.lr_budget")
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
