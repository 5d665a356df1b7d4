"""Throughput benchmark of both arms: ms/step, tokens/s, MFU, peak memory, and where a step's time goes.

    python -m training.bench --arms gpt,ngpt --shape gpt2-small --context 1024 --batch 32 --compile \\
                             --device cuda --json bench.json
    python -m training.bench --shape demo --context 64 --batch 8        # CPU, the demo's shape

A step is forward + backward + the optimizer (AdamW; in `gpt-muon` Muon for the hidden matrices and AdamW
for the rest; built by training/optim.py, as in training) + the model's post-step hook, on random tokens,
under the same precision rules as training (bf16 autocast with fp32 weights on CUDA, fp32 on CPU). The
total is timed over `--steps` un-instrumented steps; the split (forward / backward / optimizer / post-step)
over `--split-steps` more steps with a device sync between phases, so it adds up to slightly more.

`--activations` also predicts, per arm, the activations the step saves for its backward pass under bf16
autocast (eager, or compiled with `--compile`), by tracing on fake tensors (training/activations.py): it
works for any shape on a CPU, and with `--steps 0` nothing is timed. Its weights + optimizer column counts
AdamW's two moments for every parameter (an upper bound for `gpt-muon`, whose matrices keep one buffer).

MFU convention: FLOPs per token = 6 x (parameters other than the input embedding) + 12 x layers x
d_model x context, against the measured bf16 matrix-product peak of the GPU (`--peak-flops` to give one).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace

import torch

from models import ModelConfig, build_model
from models.config import KINDS
from training.cli import OneLineParser
from training.config import OptimConfig
from training.optim import build_optimizer
from training.typed_yaml import ConfigError, apply_overrides

SHAPES = {  # shared model shapes; the arm sets `kind`
    "gpt2-small": dict(n_layers=12, n_heads=12, n_embd=768, vocab_size=50304, mlp="swiglu", tied_embeddings=False),
    "seed": dict(n_layers=12, n_heads=8, n_embd=768, vocab_size=50304),
    "demo": dict(n_layers=4, n_heads=4, n_embd=64, vocab_size=50304),
    "tiny": dict(n_layers=2, n_heads=2, n_embd=32, vocab_size=50304),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: benchmark arms that are not a model kind: nGPT with its normalizations in plain autograd; GPT trained
#: by Muon (hidden matrices) with AdamW (the rest)
VARIANTS = {"ngpt-plain": ("ngpt", False, "adamw"), "gpt-muon": ("gpt", True, "muon")}


def parse_arm(name: str) -> tuple[str, bool, str]:
    """An ``--arms`` entry (a model kind or a key of :data:`VARIANTS`) -> ``(model kind, fused_norms,
    optimizer)``."""
    return VARIANTS.get(name, (name, True, "adamw"))


def bench_arm(config: ModelConfig, batch: int, device: torch.device, compile_: bool, warmup: int, steps: int,
              split_steps: int, peak_flops: float | None, fused_norms: bool = True, optim_name: str = "adamw") -> dict:
    torch.manual_seed(0)
    model = build_model(config, fused_norms).to(device)
    optimizer = build_optimizer(model, OptimConfig(name=optim_name, lr=1e-4, weight_decay=0.1, adamw_lr=1e-4), device)
    forward = torch.compile(model) if compile_ else model
    post_step = torch.compile(model.post_step) if compile_ and config.kind == "ngpt" else model.post_step
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    x = torch.randint(0, config.vocab_size, (batch, config.context_length), device=device)
    y = torch.randint(0, config.vocab_size, (batch, config.context_length), device=device)

    def phases() -> list:
        marks = [time.perf_counter()]
        with autocast:
            _, loss = forward(x, y)
        _sync(device)
        marks.append(time.perf_counter())
        loss.backward()
        _sync(device)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        marks.append(time.perf_counter())
        post_step()
        _sync(device)
        marks.append(time.perf_counter())
        return [b - a for a, b in zip(marks, marks[1:])]

    def step() -> None:
        with autocast:
            _, loss = forward(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        post_step()

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    split = [sum(col) / split_steps for col in zip(*(phases() for _ in range(split_steps)))]
    tokens_per_s = batch * config.context_length / seconds
    flops_per_token = model.flops_per_token(config.context_length)
    return {
        "arm": arm_name(config, fused_norms, optim_name),
        "ms_per_step": 1000 * seconds,
        "tokens_per_s": tokens_per_s,
        "mfu": flops_per_token * tokens_per_s / peak_flops if peak_flops else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "forward_ms": 1000 * split[0], "backward_ms": 1000 * split[1],
        "optimizer_ms": 1000 * split[2], "post_step_ms": 1000 * split[3],
        "params": model.num_params(), "flops_per_token": flops_per_token,
        "config": asdict(config),
    }


def format_rows(rows: list[dict]) -> str:
    head = (f"{'arm':<16}{'ms/step':>10}{'tokens/s':>12}{'MFU':>7}{'peak GiB':>10}"
            f"{'fwd ms':>9}{'bwd ms':>9}{'opt ms':>9}{'post ms':>9}{'vs first':>10}")
    lines = [head]
    for row in rows:
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] else "-"
        mem = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
        lines.append(f"{row['arm']:<16}{row['ms_per_step']:>10.1f}{row['tokens_per_s']:>12,.0f}{mfu:>7}{mem:>10}"
                     f"{row['forward_ms']:>9.1f}{row['backward_ms']:>9.1f}{row['optimizer_ms']:>9.1f}"
                     f"{row['post_step_ms']:>9.2f}{row['ms_per_step'] / rows[0]['ms_per_step']:>9.2f}x")
    return "\n".join(lines)


def format_activations(rows: list[dict], compiled: bool) -> str:
    lines = [f"saved for backward (bf16 autocast, {'compiled' if compiled else 'eager'}, predicted by tracing)",
             f"{'arm':<16}{'GiB':>8}{'KiB/token':>11}{'vs first':>10}{'+ weights, AdamW GiB':>22}{'vs first':>10}"]
    for row in rows:
        lines.append(f"{row['arm']:<16}{row['saved_activations_gib']:>8.2f}{row['saved_kib_per_token']:>11.1f}"
                     f"{row['saved_activations_gib'] / rows[0]['saved_activations_gib']:>9.2f}x"
                     f"{row['predicted_gib']:>22.2f}{row['predicted_gib'] / rows[0]['predicted_gib']:>9.2f}x")
    return "\n".join(lines)


def arm_name(config: ModelConfig, fused_norms: bool = True, optim_name: str = "adamw") -> str:
    if config.kind == "gpt":
        return ("gpt+qknorm" if config.qk_norm else "gpt") + ("+muon" if optim_name == "muon" else "")
    return config.kind if fused_norms else f"{config.kind}-plain"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m training.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="gpt,ngpt",
                        help="model kinds to compare, e.g. gpt,ngpt (first = reference); ngpt-plain: nGPT with "
                             "plain-autograd normalizations (models/ngpt_ops.py); gpt-muon: GPT trained by Muon "
                             "with AdamW (training/optim.py)")
    parser.add_argument("--shape", default="gpt2-small", help=f"model shape: {', '.join(SHAPES)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                        help="override a model key, e.g. --set model.n_layers=24 --set model.qk_norm=true")
    parser.add_argument("--context", type=int, default=1024, help="sequence length (tokens)")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model and nGPT's post-step")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (0: none, with --activations)")
    parser.add_argument("--split-steps", type=int, default=5)
    parser.add_argument("--peak-flops", type=float, help="MFU denominator (FLOP/s); default: measured on CUDA")
    parser.add_argument("--activations", action="store_true",
                        help="also predict the activations saved for backward (bf16 autocast) by tracing")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.shape not in SHAPES:
        return fail(f"--shape: unknown shape {args.shape!r}; known: {', '.join(SHAPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        return fail("--device: cuda requested but torch sees no CUDA device")
    if min(args.context, args.batch, args.split_steps) < 1 or args.warmup < 0 or args.steps < 0:
        return fail("--context, --batch and --split-steps must be positive, --steps and --warmup not negative")
    if args.steps == 0 and not args.activations:
        return fail("--steps: 0 times nothing; it needs --activations")
    try:
        shape = apply_overrides({"model": dict(SHAPES[args.shape], context_length=args.context)}, args.overrides)
        if set(shape) != {"model"}:
            return fail(f"--set: only model.* keys can be set here, got {', '.join(k for k in shape if k != 'model')}")
        base = ModelConfig(**shape["model"])
        names = [name.strip() for name in args.arms.split(",") if name.strip()]
        unknown = [name for name in names if name not in KINDS and name not in VARIANTS]
        if unknown or not names:
            what = f"unknown arm {', '.join(map(repr, unknown))}" if unknown else "no arm given"
            return fail(f"--arms: {what}; known: {', '.join((*KINDS, *VARIANTS))}")
        arms = [parse_arm(name) for name in names]
        configs = [replace(base, kind=kind) for kind, _, _ in arms]
    except (ConfigError, TypeError, ValueError) as err:
        return fail(f"model: {err}")
    device = torch.device(args.device)
    from training.runtime import measure_peak_flops

    if device.type == "cpu":  # as the runner does on CPU (training/allocator.py)
        from training.allocator import keep_freed_memory

        keep_freed_memory()

    if args.steps:
        peak = args.peak_flops or measure_peak_flops(device)
        rows = [bench_arm(c, args.batch, device, args.compile, args.warmup, args.steps, args.split_steps, peak, fused,
                          optim_name) for c, (_, fused, optim_name) in zip(configs, arms)]
        print(f"{args.shape} x {args.batch} x {args.context} tokens, {args.device}"
              f"{' (' + torch.cuda.get_device_name(device) + ')' if args.device == 'cuda' else ''}, "
              f"{'bf16 autocast' if args.device == 'cuda' else 'fp32'}, {'compiled' if args.compile else 'eager'}, "
              f"torch {torch.__version__}" + (f", peak {peak / 1e12:.0f} TFLOP/s" if peak else ""))
        print(format_rows(rows))
    else:
        peak, rows = None, [{"arm": arm_name(c, fused, optim_name), "config": asdict(c)}
                            for c, (_, fused, optim_name) in zip(configs, arms)]
    if args.activations:
        from training.activations import saved_activations

        for config, (_, fused, _), row in zip(configs, arms, rows):
            row.update(saved_activations(config, args.batch, compiled=args.compile, fused_norms=fused))
        print(format_activations(rows, args.compile))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": args.shape, "batch": args.batch, "context": args.context, "device": args.device,
                       "compile": args.compile, "torch": torch.__version__, "peak_flops": peak,
                       "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
