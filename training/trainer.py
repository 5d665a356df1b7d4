"""The training loop of one arm and one seed.

Same loop for both arms: AdamW on the model's own parameter groups, gradient clipping, the token-based
LR schedule, gradient accumulation (no all-reduce on all but the last micro-step), bf16 autocast on
CUDA / fp32 on CPU, optional torch.compile, the model's post-step hook (nGPT renormalizes), and
validation on the same fixed tokens at a token interval. Metrics go to a logger (MLflow on rank 0).

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
from training.schedule import lr_at


DIAGNOSTIC_WINDOWS = 4  # validation windows the hypersphere diagnostics run on (the same ones every time)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Preempted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint was saved (when enabled) before this was raised."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum, self.checkpoint = signum, checkpoint
        where = f"checkpoint saved at {checkpoint}" if checkpoint else "no checkpoint (checkpoint.enabled is false)"
        super().__init__(f"stopped by signal {signum}; {where}")


class StopFlag:
    """Set from a signal handler; the loop checks it between steps (all ranks agree on log steps)."""

    def __init__(self):
        self.signum = 0

    def request(self, signum: int, frame=None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum


@dataclass
class CheckpointPlan:
    """Where and when one arm/seed writes checkpoints, and what identifies them."""

    folder: Path
    every_tokens: int  # 0 = only at the end and on preemption
    keep_last: int
    identity: dict  # config hash, MLflow run ids, arm, seed: stored in every checkpoint
    branch_steps: tuple[int, ...] = ()  # a cooldown trunk also saves branch_<step>.pt after these steps


@dataclass(frozen=True)
class Runtime:
    """Where and how an arm runs; resolved from `train.device/precision/compile`, recorded in MLflow."""

    device: torch.device
    precision: str  # "bf16" (autocast, fp32 master weights) or "fp32"
    compile: bool

    @property
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def resolve_runtime(arm: ArmConfig, dist: DistInfo) -> Runtime:
    t = arm.train
    device_type = t.device if t.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda requested but torch sees no CUDA device")
    device = torch.device("cuda", dist.local_rank) if device_type == "cuda" else torch.device("cpu")
    precision = t.precision if t.precision != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    compile_ = (device_type == "cuda") if t.compile == "auto" else (t.compile == "on")
    return Runtime(device, precision, compile_)


def measure_peak_flops(device: torch.device, n: int = 8192, repeats: int = 20) -> float | None:
    """Measured bf16 matrix-product FLOP/s of the accelerator (None on CPU): the MFU denominator."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


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

    @property
    def best_val_loss(self) -> float:
        return min((e.val_loss for e in self.evals), default=math.nan)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / self.train_seconds if self.train_seconds > 0 else math.nan

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
    wall_start = time.perf_counter()
    runtime = runtime or resolve_runtime(arm, dist)
    t, o = arm.train, arm.optim
    local_accum = local_accum_steps(t.grad_accum_steps, dist.world_size, arm=arm.name)
    tokens_per_step = arm.tokens_per_step()
    steps = arm.steps()

    torch.manual_seed(seed)
    model = build_model(arm.model).to(runtime.device)
    if init_state is not None and resume is None:
        model.load_state_dict(init_state)
    result = ArmResult(arm=arm.name, seed=seed, n_params=model.num_params())
    flops_per_token = model.flops_per_token(arm.model.context_length)
    optimizer = torch.optim.AdamW(model.optimizer_groups(o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2),
                                  eps=o.eps, fused=runtime.device.type == "cuda")
    forward_model = torch.compile(model) if runtime.compile else model
    train_model = forward_model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_model = DDP(forward_model, device_ids=device_ids)

    start_step = 0
    if resume is not None:  # same weights, optimizer moments, RNG and curve as when it was saved
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
        start_step = resume["step"]
        previous = ArmResult.from_state(resume["result"])
        result.evals = previous.evals
    batches = TrainBatches(splits.train, arm.model.context_length, t.micro_batch_size, t.grad_accum_steps, seed)
    val_x, val_y = val_windows(splits.val, arm.model.context_length, t.eval_tokens)
    first_micro = dist.rank * local_accum

    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps * tokens_per_step, initial=start_step * tokens_per_step, unit="tok",
                   unit_scale=True, dynamic_ncols=True, desc=desc or f"{arm.name} seed {seed}", leave=True)

    train_seconds = resume["result"]["train_seconds"] if resume else 0.0
    wall_before = resume["result"]["wall_seconds"] if resume else 0.0
    window_tokens, window_seconds, window_steps = 0, 0.0, 0
    postfix = {"loss": "-", "val": "-", "tok_s": "-"}

    def run_eval(step: int) -> dict[str, float]:
        val_loss = evaluate(forward_model, val_x, val_y, t.micro_batch_size, runtime, dist)
        result.evals.append(EvalPoint(step, step * tokens_per_step, val_loss, train_seconds))
        postfix["val"] = f"{val_loss:.3f}"
        metrics = {record.VAL_LOSS: val_loss}
        if diagnostics and dist.is_main:  # weights are the same on every rank; no collectives inside
            from training.model_diagnostics import compute_diagnostics

            with runtime.autocast:
                result.diagnostics = compute_diagnostics(model, val_x[:DIAGNOSTIC_WINDOWS].to(runtime.device))
            metrics.update(result.diagnostics.summary())  # a few metrics; the per-layer values as a table
            logger.log_text(result.diagnostics.table_json(step, step * tokens_per_step),
                            record.diagnostics_artifact(step))
        return metrics

    def save(step: int, branch: bool = False) -> str | None:
        """Checkpoint after `step` (rank 0): metrics up to it are flushed to MLflow first."""
        if checkpoints is None or not dist.is_main:
            return None
        logger.flush(wait=True)
        result.tokens_seen, result.train_seconds = step * tokens_per_step, train_seconds
        result.wall_seconds = wall_before + time.perf_counter() - wall_start
        state = {"model": model.state_dict(), "rng": rng_state(),
                 "tokens": step * tokens_per_step, "finished": step == steps, "result": result.to_state(),
                 "model_config": asdict(arm.model),
                 **checkpoints.identity}
        if step != steps or branch:  # nothing resumes from a finished run: its optimizer state (2/3 of it) is left out
            state["optimizer"] = optimizer.state_dict()
        if branch:
            return str(save_branch(checkpoints.folder, step, state))
        return str(save_checkpoint(checkpoints.folder, step, state, checkpoints.keep_last))

    def run_downstream(step: int) -> dict[str, float]:
        if downstream is None or not downstream.due(step, steps, tokens_per_step):
            return {}
        metrics = downstream(model, step)
        model.train()
        return metrics

    if resume is None:
        logger.log(0, {**run_eval(0), **run_downstream(0), record.TOKENS: 0, record.ELAPSED_S: 0.0})
    elif result.evals:
        postfix["val"] = f"{result.evals[-1].val_loss:.3f}"
    model.train()
    for step in range(start_step + 1, steps + 1):
        step_start = time.perf_counter()
        lr = lr_at((step - 1) * tokens_per_step, steps * tokens_per_step, o)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=runtime.device)
        for micro in range(local_accum):
            x, y = batches.get(step - 1, first_micro + micro)
            x = x.to(runtime.device, non_blocking=True)
            y = y.to(runtime.device, non_blocking=True)
            last_micro = micro == local_accum - 1
            no_sync = train_model.no_sync() if dist.enabled and not last_micro else contextlib.nullcontext()
            with no_sync:
                with runtime.autocast:
                    _, loss = train_model(x, y)
                (loss / local_accum).backward()
            loss_sum += loss.detach()
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                     if t.grad_clip > 0 else None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.post_step()

        checkpoint_now = checkpoints is not None and (
            step == steps or _crossed(step, tokens_per_step, checkpoints.every_tokens))
        log_now = step % t.log_every_steps == 0 or step == steps or checkpoint_now
        if log_now:  # the only host syncs of a step, and only on log steps
            signal_seen = float(stop.signum) if stop is not None else 0.0
            reduced = all_reduce_sum(torch.stack([loss_sum / local_accum,
                                                  torch.tensor(signal_seen, device=runtime.device)]), dist)
            train_loss, signum = (reduced[0] / dist.world_size).item(), int(reduced[1].item() > 0)
            if signum:  # every rank stops at this same step
                signum = stop.signum or 15
            if runtime.device.type == "cuda":
                torch.cuda.synchronize(runtime.device)
        step_seconds = time.perf_counter() - step_start
        train_seconds += step_seconds
        window_tokens += tokens_per_step
        window_seconds += step_seconds
        window_steps += 1

        metrics = {}
        if log_now:
            if not math.isfinite(train_loss):
                result.status = "FAILED"
                raise TrainingDiverged(f"{arm.name} seed {seed}: training loss is {train_loss} at step {step}")
            tokens_per_s = window_tokens / window_seconds  # global: all processes together
            metrics.update({
                record.TRAIN_LOSS: train_loss,
                record.LR: lr,
                record.TOKENS_PER_S: tokens_per_s,
                record.STEP_MS: 1000.0 * window_seconds / window_steps,
            })
            if grad_norm is not None:
                metrics[record.GRAD_NORM] = grad_norm.item()
            if peak_flops:
                metrics[record.MFU] = flops_per_token * tokens_per_s / (peak_flops * dist.world_size)
            postfix.update(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            window_tokens, window_seconds, window_steps = 0, 0.0, 0
        if eval_due(step, steps, tokens_per_step, t.eval_every_tokens):
            metrics.update(run_eval(step))
        metrics.update(run_downstream(step))
        if metrics:
            metrics.update({record.TOKENS: step * tokens_per_step, record.ELAPSED_S: train_seconds})
            logger.log(step, metrics)
        if bar is not None:
            bar.update(tokens_per_step)
            if metrics:
                bar.set_postfix(postfix, refresh=False)
        if checkpoints is not None and step in checkpoints.branch_steps:  # before a preemption at this step
            save(step, branch=True)
        if log_now and signum:
            path = save(step)
            if bar is not None:
                bar.close()
            raise Preempted(signum, path)
        if checkpoint_now:
            save(step)
    if bar is not None:
        bar.close()
    result.tokens_seen = steps * tokens_per_step
    result.train_seconds = train_seconds
    result.wall_seconds = wall_before + time.perf_counter() - wall_start
    result.model = model
    return result
