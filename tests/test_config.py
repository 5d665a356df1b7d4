"""Experiment config: inheritance, overrides, and one clear error per kind of bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from training.config import flatten
from training.experiment import build_experiment, load_experiment
from training.schedule import lr_at
from training.typed_yaml import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "tiny",
    "seeds": [0],
    "data": {"dataset": "verdict", "val_fraction": 0.1},
    "model": {"n_layers": 2, "n_heads": 2, "n_embd": 32, "context_length": 16, "vocab_size": 50304},
    "train": {"tokens": 1024, "micro_batch_size": 2, "grad_accum_steps": 2, "eval_every_tokens": 256,
              "eval_tokens": 64},
    "optim": {"lr": 1e-3, "weight_decay": 0.1, "warmup_tokens": 64},
    "arms": {"gpt": {"model": {"kind": "gpt"}},
             "ngpt": {"model": {"kind": "ngpt"}, "optim": {"lr": 3e-3, "weight_decay": 0.0, "warmup_tokens": 0}}},
    "targets": [6.0, 5.0],
}


def with_change(path: str, value):
    raw = copy.deepcopy(BASE)
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return raw


DELETE = object()


def test_arms_inherit_and_override():
    cfg = build_experiment(copy.deepcopy(BASE))
    gpt, ngpt = cfg.arms
    assert (gpt.name, gpt.model.kind, gpt.optim.lr, gpt.optim.weight_decay) == ("gpt", "gpt", 1e-3, 0.1)
    assert (ngpt.model.kind, ngpt.optim.lr, ngpt.optim.weight_decay, ngpt.optim.warmup_tokens) == ("ngpt", 3e-3, 0.0, 0)
    assert ngpt.model.n_embd == 32 and ngpt.train.tokens == 1024  # inherited
    assert gpt.tokens_per_step() == 2 * 2 * 16 and gpt.steps() == 16
    assert cfg.baseline_arm == "gpt"
    assert cfg.to_dict()["arms"]["ngpt"]["optim"]["lr"] == 3e-3
    assert flatten({"a": {"b": 1, "c": {"d": 2}}}) == {"a.b": 1, "a.c.d": 2}
    assert len(cfg.config_hash()) == 16
    assert cfg.config_hash() == build_experiment(copy.deepcopy(BASE)).config_hash()


def test_numbers_in_any_yaml_spelling(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_experiment(path, ["train.tokens=2e3", "arms.ngpt.optim.lr=1e-2", "seeds=[1, 2]",
                                 "train.eval_tokens=2_000"])
    assert cfg.arms[0].train.tokens == 2000 and isinstance(cfg.arms[0].train.tokens, int)
    assert cfg.arms[1].optim.lr == 1e-2 and cfg.arms[0].optim.lr == 1e-3
    assert cfg.seeds == [1, 2] and cfg.arms[0].train.eval_tokens == 2000
    only = load_experiment(path, arms=["ngpt"], seeds=[3])
    assert [a.name for a in only.arms] == ["ngpt"] and only.seeds == [3]


def test_cooldown_needs_checkpoints():
    raw = with_change("sweep.method", "both")
    raw["checkpoint"] = {"enabled": False}
    with pytest.raises(ConfigError, match="^sweep.method: both branches the cooldowns from checkpoints"):
        build_experiment(raw)


def test_sweep_and_baseline_parse():
    raw = with_change("sweep", {"budgets": [1024, 512], "lr": {"ngpt": [3e-3, 1e-3]}, "lr_budget": "each"})
    raw["baseline"] = "ngpt"
    cfg = build_experiment(raw)
    assert cfg.sweep.budgets == [512, 1024] and cfg.sweep.lr == {"ngpt": [1e-3, 3e-3]}
    assert cfg.sweep.lr_budget == "each" and cfg.baseline_arm == "ngpt"
    assert cfg.to_dict()["sweep"]["budgets"] == [512, 1024]
    assert "sweep" not in build_experiment(copy.deepcopy(BASE)).to_dict()  # old config hashes unchanged


def test_disabled_arms_run_only_when_named(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["arms"]["ngpt"]["enabled"] = False
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert [a.name for a in load_experiment(path).arms] == ["gpt"]
    assert [a.name for a in load_experiment(path, arms=["gpt", "ngpt"]).arms] == ["gpt", "ngpt"]
    raw["arms"]["gpt"]["enabled"] = False
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="^arms: every arm has enabled: false"):
        load_experiment(path)


def test_shipped_experiments_load():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        cfg = load_experiment(path)
        assert cfg.arms and cfg.targets, path


BAD = [
    # (change, expected start of the message)
    (("nmae", "x"), "nmae: unknown key (did you mean name?)"),
    (("name", DELETE), "name: required"),
    (("name", ""), "name: required"),
    (("model.n_layer", 2), "model.n_layer: unknown key (did you mean n_layers?)"),
    (("model.n_heads", 3), "model.n_heads:"),
    (("model.n_embd", 0), "model.n_embd:"),
    (("model.n_layers", -1), "model.n_layers:"),
    (("model.n_embd", 30), "model."),  # head size 15 is odd: RoPE needs even
    (("arms.gpt.model.kind", "bert"), "arms.gpt.model.kind: unknown model kind"),
    (("arms.ngpt.model.n_heads", 5), "arms.ngpt.model.n_heads:"),
    (("model.n_layers", "four"), "model.n_layers: expected an integer, got 'four'"),
    (("model.n_layers", 2.5), "model.n_layers: expected an integer, got 2.5"),
    (("train.tokens", 0), "train.tokens: must be positive"),
    (("train.tokens", 10), "train.tokens: 10 tokens is less than one optimizer step"),
    (("train.micro_batch_size", -2), "train.micro_batch_size: must be positive"),
    (("train.precision", "fp16"), "train.precision: must be one of auto, bf16, fp32"),
    (("optim.schedule", "step"), "optim.schedule: must be one of cosine, linear, wsd, constant"),
    (("optim.beta2", 1.5), "optim.beta2: must be in [0, 1)"),
    (("arms.ngpt.optim.lr", -1e-3), "arms.ngpt.optim.lr: must be positive"),
    (("arms.ngpt.optim.lr", "fast"), "arms.ngpt.optim.lr: expected a number, got 'fast'"),
    (("arms.gpt.optim.name", "adam"), "arms.gpt.optim.name: must be one of adamw, muon; got 'adam'"),
    (("arms.ngpt.optim.name", "muon"), "arms.ngpt.optim.name: muon (arm ngpt) trains GPT models only, not ngpt"),
    (("arms.gpt.optim", {"name": "muon"}), "optim.adamw_lr: required with optim.name muon (arm gpt)"),
    (("arms.gpt.optim", {"name": "muon", "adamw_lr": 0}), "arms.gpt.optim.adamw_lr: must be positive"),
    (("arms.gpt.optim", {"name": "muon", "adamw_lr": 1e-3, "muon_ns_steps": 0}),
     "arms.gpt.optim.muon_ns_steps: must be 1 to 50, got 0"),
    (("arms.gpt.optim.muon_nesterov", "yes"), "arms.gpt.optim.muon_nesterov: expected true or false, got 'yes'"),
    (("optim.warmup_tokens", 5000), "optim.warmup_tokens: 5000 must be less than train.tokens=1024"),
    (("targets", ["low", 5.0]), "targets[0]: expected a number, got 'low'"),
    (("targets", [-1.0]), "targets: target losses must be positive"),
    (("arms", {}), "arms: required"),
    (("arms", DELETE), "arms: required"),
    (("arms.gpt.data", {"dataset": "x"}), "arms.gpt.data: unknown key"),
    (("arms.gpt.init_form", "x"), "arms.gpt.init_form: unknown key (an arm sets only model, train, optim, init_from, enabled)"),
    (("arms.gpt.init_from", 5), "arms.gpt.init_from: expected a string, got 5"),
    (("arms.gpt.enabled", "no"), "arms.gpt.enabled: expected true or false, got 'no'"),
    (("arms.gpt.init_from", " "), "arms.gpt.init_from: must be a checkpoint path"),
    (("arms.gpt", "gpt"), "arms.gpt: expected a mapping"),
    (("seeds", []), "seeds: give at least one seed"),
    (("seeds", [0, 0]), "seeds: duplicate seeds"),
    (("data.dataset", "wikipedia"), "data.dataset: unknown corpus 'wikipedia'"),
    (("data.val_fraction", 1.5), "data.val_fraction: must be between 0 and 1"),
    (("tokenizer", "llama"), "tokenizer: must be one of gpt2"),
    (("train", [1, 2]), "train: expected a mapping"),
    (("model.vocab_size", 1000), "model.vocab_size: 1000 is smaller than the gpt2 tokenizer's 50257 tokens"),
    (("model.tied_embeddings", "yes"), "model.tied_embeddings: expected true or false"),
    (("baseline", "gtp"), "baseline: 'gtp' is not an arm (did you mean gpt?)"),
    (("sweep", [1024]), "sweep: expected a mapping of keys"),
    (("sweep.budget", [1024]), "sweep.budget: unknown key (did you mean budgets?)"),
    (("sweep.budgets", []), "sweep.budgets: give at least one token budget"),
    (("sweep.budgets", [512, 512]), "sweep.budgets: duplicate budgets"),
    (("sweep.budgets", [32, 1024]), "sweep.budgets: 32 tokens is less than one optimizer step of arm gpt"),
    (("sweep.budgets", [64, 1024]), "sweep.budgets: 64 tokens is within arm gpt's optim.warmup_tokens=64"),
    (("sweep.method", "branch"), "sweep.method: must be one of full, cooldown, both"),
    (("sweep.lr", [1e-3]), "sweep.lr: expected a mapping of arm name to a list of learning rates"),
    (("sweep.lr.ngtp", [1e-3]), "sweep.lr.ngtp: not an arm (did you mean ngpt?)"),
    (("sweep.lr.gpt", []), "sweep.lr.gpt: give at least one learning rate"),
    (("sweep.lr.gpt", [1e-3, -1.0]), "sweep.lr.gpt: learning rates must be positive"),
    (("sweep.lr.gpt", [1e-3, "big"]), "sweep.lr.gpt[1]: expected a number, got 'big'"),
    (("sweep.lr.gpt", [1e-3, 1e-3]), "sweep.lr.gpt: duplicate learning rates"),
    (("sweep.lr_budget", 1024), "sweep.lr: lr_budget and lr_seeds need a learning-rate grid"),
    (("sweep", {"lr": {"gpt": [1e-3]}, "lr_budget": 512}), "sweep.lr_budget: 512 is not one of the budgets [1024]"),
    (("sweep", {"lr": {"gpt": [1e-3]}, "lr_seeds": [3]}), "sweep.lr_seeds: seed 3 is not in seeds [0]"),
    (("sweep", {"method": "cooldown"}), None),  # valid: checkpoints are on by default
]
BAD = [row for row in BAD if row[1] is not None]


@pytest.mark.parametrize("change,message", BAD, ids=[c[0][0] + "=" + repr(c[0][1])[:20] for c in BAD])
def test_bad_config_names_the_key(change, message):
    with pytest.raises(ConfigError) as err:
        build_experiment(with_change(*change))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,message", [
    ("name: [unclosed", "invalid YAML (line 1"),
    ("- just\n- a list\n", "the document must be a mapping"),
    ("", "the document must be a mapping"),
])
def test_bad_yaml_documents(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_experiment(path)


def test_bad_command_line_choices(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_experiment(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="--arms: unknown arm 'gpt2'; this experiment has gpt, ngpt"):
        load_experiment(path, arms=["gpt2"])
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_experiment(path, ["train.tokens"])
    with pytest.raises(ConfigError, match="train.tokenz: unknown key"):
        load_experiment(path, ["train.tokenz=5"])


def test_schedules_in_tokens():
    cfg = build_experiment(copy.deepcopy(BASE)).arms[0].optim
    cfg.warmup_tokens, cfg.lr, cfg.min_lr_ratio = 100, 1.0, 0.1
    assert lr_at(0, 1000, cfg) == pytest.approx(1 / 101)
    assert lr_at(99, 1000, cfg) == pytest.approx(100 / 101)
    assert lr_at(100, 1000, cfg) == pytest.approx(1.0)
    assert lr_at(550, 1000, cfg) == pytest.approx(0.55)  # cosine midpoint: floor + (1 - floor) / 2
    assert lr_at(1000, 1000, cfg) == pytest.approx(0.1)
    cfg.schedule = "linear"
    assert lr_at(550, 1000, cfg) == pytest.approx(0.55)
    cfg.schedule, cfg.decay_fraction = "wsd", 0.2
    assert lr_at(700, 1000, cfg) == 1.0 and lr_at(900, 1000, cfg) == pytest.approx(0.55)
    cfg.schedule = "constant"
    assert lr_at(999, 1000, cfg) == 1.0
