"""The GPU code paths a CPU can run: bf16 autocast and torch.compile, end to end for both arms."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from analysis import record
from training.checkpoint import checkpoints_in
from training.data.corpus import load_splits
from training.distributed import DistInfo
from training.experiment import load_experiment
from training.trainer import CheckpointPlan, train_arm

TINY = {
    "name": "precision_paths",
    "data": {"dataset": "verdict"},
    "model": {"n_layers": 1, "n_heads": 2, "n_embd": 32, "context_length": 32},
    "train": {"tokens": 4096, "micro_batch_size": 4, "grad_accum_steps": 2, "eval_every_tokens": 1024,
              "eval_tokens": 256},
    "optim": {"lr": 3e-3, "warmup_tokens": 256},
    "arms": {"gpt": {"model": {"kind": "gpt"}},
             "ngpt": {"model": {"kind": "ngpt"}, "optim": {"lr": 1e-2, "weight_decay": 0.0, "warmup_tokens": 0}}},
}


class ListLogger:
    run_id = "test"

    def __init__(self):
        self.rows = []

    def log(self, step, metrics):
        self.rows.append((step, dict(metrics)))

    def flush(self, wait=False):
        pass

    def close(self, status="FINISHED"):
        pass

    def series(self, key):
        return {step: m[key] for step, m in self.rows if key in m}


def _arms(tmp_path, *overrides):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    cfg = load_experiment(path, list(overrides))
    splits = load_splits(cfg.data, cfg.tokenizer, 32)
    return cfg.arms, splits


def _check_learns(logger: ListLogger, steps: int) -> None:
    train = logger.series(record.TRAIN_LOSS)
    val = logger.series(record.VAL_LOSS)
    assert sorted(train) == list(range(1, steps + 1))
    assert all(math.isfinite(v) for v in [*train.values(), *val.values()])
    assert val[steps] < val[0] - 0.05, val  # validation loss falls


@pytest.mark.parametrize("kind", ["gpt", "ngpt"])
def test_bf16_trains_and_resumes_exactly(tmp_path, kind, one_thread, data_dir):
    arms, splits = _arms(tmp_path, "train.precision=bf16", "train.compile=false")
    arm = next(a for a in arms if a.name == kind)
    steps = arm.steps()
    plan = CheckpointPlan(tmp_path / "ckpt", every_tokens=arm.tokens_per_step(), keep_last=100,
                          identity={"config_hash": "x", "run_id": "r"})
    full = ListLogger()
    result = train_arm(arm, 0, splits, DistInfo(), full, progress=False, checkpoints=plan)
    assert result.tokens_seen == steps * arm.tokens_per_step()
    _check_learns(full, steps)
    # resume from the middle: the rest of the curve is the uninterrupted one, bitwise
    half = next(p for p in checkpoints_in(tmp_path / "ckpt") if p.stem == f"step_{steps // 2:08d}")
    state = torch.load(half, weights_only=True)
    rest = ListLogger()
    resumed = train_arm(arm, 0, splits, DistInfo(), rest, progress=False, resume=state)
    for key in (record.TRAIN_LOSS, record.VAL_LOSS):
        tail = {s: v for s, v in full.series(key).items() if s > steps // 2}
        assert rest.series(key) == tail, key
    # the resumed run's result holds the whole curve: the evaluations before the checkpoint too
    assert [(e.step, e.val_loss) for e in resumed.evals] == [(e.step, e.val_loss) for e in result.evals]


def test_compiled_bf16_trains_both_arms(tmp_path, one_thread, data_dir):
    arms, splits = _arms(tmp_path, "train.precision=bf16", "train.compile=true", "train.tokens=3072",
                         "train.eval_every_tokens=512")
    for arm in arms:
        logger = ListLogger()
        train_arm(arm, 0, splits, DistInfo(), logger, progress=False)
        _check_learns(logger, arm.steps())
