"""The training loop of one arm and one seed.

Same loop for every arm: the arm's optimizer (training/optim.py: AdamW, or Muon with AdamW), gradient
clipping, the token-based LR schedule, gradient accumulation (no all-reduce on all but the last
micro-step), bf16 autocast on CUDA / fp32 on CPU, optional torch.compile, the model's post-step hook
(nGPT renormalizes), and validation on the same fixed tokens at a token interval. Metrics go to a logger
(MLflow on rank 0).

Timing convention: `time/elapsed_s` counts training time only; evaluations are excluded, since their
cost depends on the evaluation settings, not on the arm.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from analysis import record
from models import build_model
from training.checkpoint import rng_state, save_branch, save_checkpoint, set_rng_state
from training.config import ArmConfig, local_accum_steps
from training.data.corpus import Splits, TrainBatches, val_windows
from training.distributed import DistInfo, all_reduce_sum
from training.optim import build_optimizer, set_lr
from training.runtime import Runtime, resolve_runtime
from training.schedule import lr_at


DIAGNOSTIC_WINDOWS = 4  # validation windows the hypersphere diagnostics run on (the same ones every time)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Preempted(BaseException):
    """SIGTERM or SIGINT arrived: raised after the checkpoint of the current step (when enabled), or at once
    outside the step loop (`StopFlag.at_once`). Like KeyboardInterrupt it is no `Exception`, so no
    `except Exception` on its way (the report's, MLflow's) takes it for an error and goes on."""

    def __init__(self, signum: int, checkpoint: str | None, where: str | None = None):
        self.signum, self.checkpoint = signum, checkpoint
        where = where or (f"checkpoint saved at {checkpoint}" if checkpoint
                          else "no checkpoint (checkpoint.enabled is false)")
        super().__init__(f"stopped by signal {signum}; {where}")


class StopFlag:
    """Set from a signal handler; the loop checks it between steps (all ranks agree on log steps). Where no
    step loop runs (the report after the last unit), `at_once` says so and a signal raises `Preempted` there."""

    def __init__(self):
        self.signum = 0
        self.at_once: str | None = None  # e.g. "during the report": stop at once, saying where

    def request(self, signum: int, frame=None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum
        if self.at_once:
            raise Preempted(signum, None, self.at_once)


@dataclass
class CheckpointPlan:
    """Where and when one arm/seed writes checkpoints, and what identifies them."""

    folder: Path
    every_tokens: int  # 0 = only at the end and on preemption
    keep_last: int
    identity: dict  # config hash, MLflow run ids, arm, seed: stored in every checkpoint
    branch_steps: tuple[int, ...] = ()  # a cooldown trunk also saves branch_<step>.pt after these steps


@dataclass
class EvalPoint:
    step: int
    tokens: int
    val_loss: float
    elapsed_s: float


@dataclass
class ArmResult:
    arm: str
    seed: int
    evals: list[EvalPoint] = field(default_factory=list)
    tokens_seen: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    n_params: int = 0
    status: str = "FINISHED"
    model: object = field(default=None, repr=False, compare=False)  # the trained module (not checkpointed)
    diagnostics: object = field(default=None, repr=False, compare=False)  # the last evaluation's Diagnostics

    @property
    def final_val_loss(self) -> float:
        return self.evals[-1].val_loss if self.evals else math.nan

    def to_state(self) -> dict:
        """Plain data for a checkpoint (`torch.load(weights_only=True)` reads it back)."""
        return {"arm": self.arm, "seed": self.seed, "evals": [asdict(e) for e in self.evals],
                "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                "wall_seconds": self.wall_seconds, "n_params": self.n_params}

    @classmethod
    def from_state(cls, state: dict) -> "ArmResult":
        return cls(arm=state["arm"], seed=state["seed"], evals=[EvalPoint(**e) for e in state["evals"]],
                   tokens_seen=state["tokens_seen"], train_seconds=state["train_seconds"],
                   wall_seconds=state["wall_seconds"], n_params=state["n_params"])


def _crossed(step: int, tokens_per_step: int, every: int) -> bool:
    """Whether the tokens seen crossed a multiple of `every` during optimizer step `step`."""
    return every > 0 and (step * tokens_per_step) // every > ((step - 1) * tokens_per_step) // every


def eval_due(step: int, steps: int, tokens_per_step: int, every: int) -> bool:
    """Evaluate before training, whenever a multiple of `every` tokens is crossed, and at the end."""
    return step == 0 or step == steps or _crossed(step, tokens_per_step, every)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, runtime: Runtime,
             dist: DistInfo) -> float:
    """Mean cross-entropy over the fixed validation windows, split across ranks."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=runtime.device)
    mine = torch.arange(dist.rank, x.shape[0], dist.world_size)
    for i in range(0, mine.numel(), batch_size):
        idx = mine[i:i + batch_size]
        xb, yb = x[idx].to(runtime.device), y[idx].to(runtime.device)
        with runtime.autocast:
            logits, _ = model(xb)
        loss = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum")
        total[0] += loss.double()
        total[1] += yb.numel()
    all_reduce_sum(total, dist)
    model.train()
    return (total[0] / total[1]).item()


def train_arm(arm: ArmConfig, seed: int, splits: Splits, dist: DistInfo, logger, *,
              runtime: Runtime | None = None, peak_flops: float | None = None, progress: bool = True,
              checkpoints: CheckpointPlan | None = None, resume: dict | None = None,
              stop: StopFlag | None = None, init_state: dict | None = None, desc: str | None = None,
              diagnostics: bool = False, downstream=None) -> ArmResult:
    """Train one arm with one seed, from scratch or from a checkpoint's `resume` state.

    `init_state` (a model state dict, e.g. a pretrained checkpoint's "model") replaces the fresh
    initialization (fine-tuning: new optimizer, new schedule, step 0); `resume` takes precedence.

    Logs to `logger`; writes checkpoints per `checkpoints` (rank 0); stops with `Preempted` after a
    checkpoint when `stop` is set, and with `TrainingDiverged` (before any checkpoint of that step)
    on a non-finite loss. With `diagnostics`, rank 0 also logs the hypersphere diagnostics
    (training/model_diagnostics.py) of the first validation windows at every evaluation: their summary as
    metrics, the per-layer values as the artifact `diagnostics/step_XXXXXXXX.json`. `downstream` (rank 0;
    e.g. training/downstream.py's `DownstreamPlan`) has `due(step, steps, tokens_per_step)` and is called
    as `downstream(model, step) -> metrics` when due, after the validation loss; its time, like the
    evaluations', is not training time. Returns the evaluation curve."""
    return _ArmTraining(arm, seed, splits, dist, logger, runtime=runtime, peak_flops=peak_flops,
                        checkpoints=checkpoints, resume=resume, stop=stop, init_state=init_state,
                        diagnostics=diagnostics, downstream=downstream).run(progress, desc)


def final_model(arm: ArmConfig, state: dict, splits: Splits, runtime: Runtime, diagnostics: bool = False):
    """The model of an arm's final checkpoint `state` on `runtime`'s device, and (with `diagnostics`) its
    hypersphere diagnostics as the run's last evaluation computed them: what `train_arm`'s result holds at
    the end, for a run whose end of run was cut short (training/session.py)."""
    model = build_model(arm.model)
    model.load_state_dict(state["model"])
    model.to(runtime.device)
    if not diagnostics:
        return model, None
    val_x, _ = val_windows(splits.val, arm.model.context_length, arm.train.eval_tokens)
    return model, _diagnostics(model, val_x, runtime)


def _diagnostics(model, val_x: torch.Tensor, runtime: Runtime):
    """The hypersphere diagnostics of `model` on the first validation windows (rank 0)."""
    from training.model_diagnostics import compute_diagnostics

    with runtime.autocast:
        return compute_diagnostics(model, val_x[:DIAGNOSTIC_WINDOWS].to(runtime.device))


class _ArmTraining:
    """The state of one `train_arm` call, in units: set-up (here), one optimizer step (`step`), the
    reduction at log steps (`sync`), its metrics (`step_metrics`), evaluation (`evaluate`), downstream
    accuracy (`downstream_metrics`), checkpoints (`save`), and the loop that strings them together (`run`)."""

    def __init__(self, arm: ArmConfig, seed: int, splits: Splits, dist: DistInfo, logger, *, runtime, peak_flops,
                 checkpoints, resume, stop, init_state, diagnostics, downstream):
        self.wall_start = time.perf_counter()
        self.arm, self.seed, self.dist, self.logger = arm, seed, dist, logger
        self.runtime = runtime = runtime or resolve_runtime(arm, dist)
        self.peak_flops, self.checkpoints, self.stop = peak_flops, checkpoints, stop
        self.diagnostics, self.downstream = diagnostics, downstream
        t, o = arm.train, arm.optim
        self.local_accum = local_accum_steps(t.grad_accum_steps, dist.world_size, arm=arm.name)
        self.tokens_per_step = arm.tokens_per_step()
        self.steps = arm.steps()

        torch.manual_seed(seed)
        self.model = model = build_model(arm.model).to(runtime.device)
        if init_state is not None and resume is None:
            model.load_state_dict(init_state)
        self.result = ArmResult(arm=arm.name, seed=seed, n_params=model.num_params())
        self.flops_per_token = model.flops_per_token(arm.model.context_length)
        self.optimizer = build_optimizer(model, o, runtime.device)
        self.forward_model = torch.compile(model) if runtime.compile else model
        self.train_model = self.forward_model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.train_model = DDP(self.forward_model, device_ids=device_ids)

        self.start_step = 0
        self.resumed = resume is not None
        if resume is not None:  # same weights, optimizer state (moments, Muon's buffers), RNG and curve as saved
            model.load_state_dict(resume["model"])
            self.optimizer.load_state_dict(resume["optimizer"])
            set_rng_state(resume["rng"])
            self.start_step = resume["step"]
            previous = ArmResult.from_state(resume["result"])
            self.result.evals = previous.evals
        self.batches = TrainBatches(splits.train, arm.model.context_length, t.micro_batch_size, t.grad_accum_steps,
                                    seed)
        self.val_x, self.val_y = val_windows(splits.val, arm.model.context_length, t.eval_tokens, t.eval_windows)
        self.first_micro = dist.rank * self.local_accum

        self.train_seconds = resume["result"]["train_seconds"] if resume else 0.0
        self.wall_before = resume["result"]["wall_seconds"] if resume else 0.0
        self.window_tokens, self.window_seconds, self.window_steps = 0, 0.0, 0
        self.postfix = {"loss": "-", "val": "-", "tok_s": "-"}

    def evaluate(self, step: int) -> dict[str, float]:
        """The validation loss after `step` (and, with diagnostics, rank 0's diagnostics), as metrics."""
        t, runtime, result = self.arm.train, self.runtime, self.result
        val_loss = evaluate(self.forward_model, self.val_x, self.val_y, t.micro_batch_size, runtime, self.dist)
        result.evals.append(EvalPoint(step, step * self.tokens_per_step, val_loss, self.train_seconds))
        self.postfix["val"] = f"{val_loss:.3f}"
        metrics = {record.VAL_LOSS: val_loss}
        if self.diagnostics and self.dist.is_main:  # weights are the same on every rank; no collectives inside
            result.diagnostics = _diagnostics(self.model, self.val_x, runtime)
            metrics.update(result.diagnostics.summary())  # a few metrics; the per-layer values as a table
            self.logger.log_text(result.diagnostics.table_json(step, step * self.tokens_per_step),
                                 record.diagnostics_artifact(step))
        return metrics

    def save(self, step: int, branch: bool = False) -> str | None:
        """Checkpoint after `step` (rank 0): metrics up to it are flushed to MLflow first."""
        checkpoints, result = self.checkpoints, self.result
        if checkpoints is None or not self.dist.is_main:
            return None
        self.logger.flush(wait=True)
        result.tokens_seen, result.train_seconds = step * self.tokens_per_step, self.train_seconds
        result.wall_seconds = self.wall_before + time.perf_counter() - self.wall_start
        state = {"model": self.model.state_dict(), "rng": rng_state(),
                 "tokens": step * self.tokens_per_step, "finished": step == self.steps, "result": result.to_state(),
                 "model_config": asdict(self.arm.model),
                 **checkpoints.identity}
        if step != self.steps or branch:  # nothing resumes from a finished run: its optimizer state (2/3 of it) is left out
            state["optimizer"] = self.optimizer.state_dict()
        if branch:
            return str(save_branch(checkpoints.folder, step, state))
        return str(save_checkpoint(checkpoints.folder, step, state, checkpoints.keep_last))

    def downstream_metrics(self, step: int) -> dict[str, float]:
        if self.downstream is None or not self.downstream.due(step, self.steps, self.tokens_per_step):
            return {}
        metrics = self.downstream(self.model, step)
        self.model.train()
        return metrics

    def step(self, step: int) -> tuple[float, torch.Tensor, torch.Tensor | None]:
        """One optimizer step: its learning rate, the micro-batches' summed loss, the gradient norm."""
        t, runtime, dist, model, local_accum = self.arm.train, self.runtime, self.dist, self.model, self.local_accum
        lr = lr_at((step - 1) * self.tokens_per_step, self.steps * self.tokens_per_step, self.arm.optim)
        set_lr(self.optimizer, lr)
        loss_sum = torch.zeros((), device=runtime.device)
        for micro in range(local_accum):
            x, y = self.batches.get(step - 1, self.first_micro + micro)
            x = x.to(runtime.device, non_blocking=True)
            y = y.to(runtime.device, non_blocking=True)
            last_micro = micro == local_accum - 1
            no_sync = self.train_model.no_sync() if dist.enabled and not last_micro else contextlib.nullcontext()
            with no_sync:
                with runtime.autocast:
                    _, loss = self.train_model(x, y)
                (loss / local_accum).backward()
            loss_sum += loss.detach()
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                     if t.grad_clip > 0 else None)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        model.post_step()
        return lr, loss_sum, grad_norm

    def sync(self, loss_sum: torch.Tensor) -> tuple[float, int]:
        """The log-step reduction, the only host syncs of a step: the mean training loss over all ranks, and
        the signal number every rank stops on (0: none)."""
        stop, runtime, dist = self.stop, self.runtime, self.dist
        signal_seen = float(stop.signum) if stop is not None else 0.0
        reduced = all_reduce_sum(torch.stack([loss_sum / self.local_accum,
                                              torch.tensor(signal_seen, device=runtime.device)]), dist)
        train_loss, signum = (reduced[0] / dist.world_size).item(), int(reduced[1].item() > 0)
        if signum:  # every rank stops at this same step
            signum = stop.signum or 15
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)
        return train_loss, signum

    def step_metrics(self, step: int, train_loss: float, lr: float, grad_norm: torch.Tensor | None) -> dict:
        """The training metrics of a log step, over the steps since the last one; fails on a non-finite loss."""
        if not math.isfinite(train_loss):
            self.result.status = "FAILED"
            raise TrainingDiverged(f"{self.arm.name} seed {self.seed}: training loss is {train_loss} at step {step}")
        tokens_per_s = self.window_tokens / self.window_seconds  # global: all processes together
        metrics = {
            record.TRAIN_LOSS: train_loss,
            record.LR: lr,
            record.TOKENS_PER_S: tokens_per_s,
            record.STEP_MS: 1000.0 * self.window_seconds / self.window_steps,
        }
        if grad_norm is not None:
            metrics[record.GRAD_NORM] = grad_norm.item()
        if self.peak_flops:
            metrics[record.MFU] = self.flops_per_token * tokens_per_s / (self.peak_flops * self.dist.world_size)
        self.postfix.update(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        self.window_tokens, self.window_seconds, self.window_steps = 0, 0.0, 0
        return metrics

    def run(self, progress: bool, desc: str | None) -> ArmResult:
        arm, seed, t, checkpoints = self.arm, self.seed, self.arm.train, self.checkpoints
        steps, tokens_per_step, result = self.steps, self.tokens_per_step, self.result
        bar = None
        if progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps * tokens_per_step, initial=self.start_step * tokens_per_step, unit="tok",
                       unit_scale=True, dynamic_ncols=True, desc=desc or f"{arm.name} seed {seed}", leave=True)

        if not self.resumed:
            self.logger.log(0, {**self.evaluate(0), **self.downstream_metrics(0), record.TOKENS: 0,
                                record.ELAPSED_S: 0.0})
        elif result.evals:
            self.postfix["val"] = f"{result.evals[-1].val_loss:.3f}"
        self.model.train()
        for step in range(self.start_step + 1, steps + 1):
            step_start = time.perf_counter()
            lr, loss_sum, grad_norm = self.step(step)
            checkpoint_now = checkpoints is not None and (
                step == steps or _crossed(step, tokens_per_step, checkpoints.every_tokens))
            log_now = step % t.log_every_steps == 0 or step == steps or checkpoint_now
            if log_now:
                train_loss, signum = self.sync(loss_sum)
            step_seconds = time.perf_counter() - step_start
            self.train_seconds += step_seconds
            self.window_tokens += tokens_per_step
            self.window_seconds += step_seconds
            self.window_steps += 1

            metrics = self.step_metrics(step, train_loss, lr, grad_norm) if log_now else {}
            if eval_due(step, steps, tokens_per_step, t.eval_every_tokens):
                metrics.update(self.evaluate(step))
            metrics.update(self.downstream_metrics(step))
            if metrics:
                metrics.update({record.TOKENS: step * tokens_per_step, record.ELAPSED_S: self.train_seconds})
                self.logger.log(step, metrics)
            if bar is not None:
                bar.update(tokens_per_step)
                if metrics:
                    bar.set_postfix(self.postfix, refresh=False)
            if checkpoints is not None and step in checkpoints.branch_steps:  # before a preemption at this step
                self.save(step, branch=True)
            if log_now and signum:
                path = self.save(step)
                if bar is not None:
                    bar.close()
                raise Preempted(signum, path)
            if checkpoint_now:
                self.save(step)
        if bar is not None:
            bar.close()
        result.tokens_seen = steps * tokens_per_step
        result.train_seconds = self.train_seconds
        result.wall_seconds = self.wall_before + time.perf_counter() - self.wall_start
        result.model = self.model
        return result
