"""Train every arm of an experiment YAML, log them to MLflow, and print the comparison.

    python runner.py experiments/verdict_vs_baseline.yaml [--set key.path=value ...]
                     [--arms gpt,ngpt] [--seeds 0,1] [--nproc-per-node N] [--dry-run]

Started by `torchrun ... runner.py EXPERIMENT.yaml` it trains in place (DDP); with `--nproc-per-node N`
it relaunches itself under torchrun. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
if str(PROJECT_DIR) not in sys.path:  # `python /elsewhere/runner.py` and torchrun workers
    sys.path.insert(0, str(PROJECT_DIR))

from analysis.errors import EXIT_BAD_INPUT, OneLineParser  # noqa: E402 (after the path is set)


def _csv(kind, what: str):
    def parse(text: str):
        items = [s.strip() for s in text.split(",")]
        if not any(items):
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if not all(items):  # "0,,1" is a typo, not the seeds 0 and 1
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} with nothing empty between the "
                                             f"commas, got {text!r}")
        try:
            return [kind(s) for s in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="runner.py", description="Train the arms of an experiment YAML (baseline GPT vs nGPT) and "
                                      "log them to MLflow.")
    parser.add_argument("experiment", help="experiment YAML, e.g. experiments/verdict_vs_baseline.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config key, e.g. --set train.tokens=1e6 --set arms.ngpt.optim.lr=3e-3")
    parser.add_argument("--arms", type=_csv(str, "arm names"), help="train only these arms, e.g. gpt,ngpt")
    parser.add_argument("--seeds", type=_csv(int, "ints"), help="seeds to run instead of the YAML's, e.g. 0,1,2")
    parser.add_argument("--nproc-per-node", type=_positive_int,
                        help="relaunch under torchrun with this many processes on this machine")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the experiment as a run would and print what it would do (what differs "
                             "between the arms, sizes, steps, device, precision, MLflow target); train nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", nargs="?", const="latest", metavar="PARENT_RUN_ID|FOLDER",
                        help="continue an interrupted invocation (default: the latest unfinished one; "
                             "this already happens automatically when one exists)")
    resume.add_argument("--no-resume", action="store_true", help="start fresh even if an unfinished run exists")
    parser.add_argument("--force", action="store_true",
                        help="resume even from checkpoints written under another config")
    return parser


def relaunch_under_torchrun(argv: list[str], nproc: int) -> int:
    """Run this same command under torchrun (single node) and return its exit code."""
    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc-per-node":
            skip = True
            continue
        if arg.startswith("--nproc-per-node="):
            continue
        rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", str(Path(__file__).resolve()), *rest]
    return subprocess.call(command)


def arm_differences(cfg) -> list[tuple[str, list[str]]]:
    """The config keys (dotted, as `--set` takes them) whose values differ between the arms, with each
    arm's value in `cfg.arms` order; a key an arm lacks (e.g. `init_from`) shows as "-"."""
    from training.config import arm_to_dict, flatten

    flat = [flatten(arm_to_dict(arm)) for arm in cfg.arms]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    missing = object()
    rows = []
    for key in keys:
        values = [f.get(key, missing) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, ["-" if v is missing else "null" if v is None else str(v) for v in values]))
    return rows


def dry_run(cfg, splits, runtimes: dict, world_size: int = 1) -> None:
    """What a run would do, checked as the run checks it, without training or logging anything: the data,
    where MLflow will log, what differs between the arms, and each arm's size, steps and runtime."""
    import os

    import torch

    from models import build_model
    from training.config import TOKENIZER_VOCAB, local_accum_steps
    from training.runtime import precision_and_compile
    from training.tracking import tracking_uri

    print(f"experiment {cfg.name!r} from {cfg.source}: seeds {cfg.seeds}, targets {cfg.targets}")
    if splits is None:
        from training.data.corpus import hf_source
        from training.data.prepare import cache_folder

        print(f"data: {cfg.data.hf.name} ({cfg.data.hf.config or 'default config'}), not prepared yet: the first "
              f"real run streams and tokenizes it into {cache_folder(*hf_source(cfg.data, cfg.tokenizer))} ({cfg.tokenizer})")
    else:
        print(f"data: {splits.source} -> {splits.train.numel():,} train / {splits.val.numel():,} validation tokens "
              f"({cfg.tokenizer})")
    origin = "from MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "MLflow's default"
    print(f"MLflow: tracking URI {tracking_uri()} ({origin}), experiment {cfg.experiment_name!r}: one parent "
          f"run, a child run per arm and seed")
    if cfg.checkpoint.enabled:
        print(f"checkpoints: {os.path.join(cfg.checkpoint.dir, cfg.experiment_name)}/<parent run id>/")
    print(f"processes: {world_size}")

    differences = arm_differences(cfg)
    names = [arm.name for arm in cfg.arms]
    if len(names) == 1:
        print(f"\none arm ({names[0]}): nothing to compare")
    elif not differences:
        print(f"\narms {', '.join(names)}: identical configs")
    else:
        print(f"\nwhat differs between the arms ({len(differences)} keys; the rest is the same):")
        width = max(len("key"), *(len(k) for k, _ in differences))
        widths = [max(len(name), *(len(values[i]) for _, values in differences)) for i, name in enumerate(names)]
        print("  " + "  ".join([f"{'key':{width}s}", *(f"{n:{w}s}" for n, w in zip(names, widths))]).rstrip())
        for key, values in differences:
            print("  " + "  ".join([f"{key:{width}s}", *(f"{v:{w}s}" for v, w in zip(values, widths))]).rstrip())

    if cfg.eval.active:
        e = cfg.eval
        when = f"at step 0, every {e.every_tokens:,} tokens and at the end" if e.every_tokens else "at the end"
        print(f"downstream (lm-eval): {', '.join(e.tasks)} {when}; "
              f"{f'at most {e.limit} documents per task' if e.limit else 'all documents'}, batch {e.batch_size}")
    for arm in cfg.arms:
        with torch.device("meta"):
            model = build_model(arm.model)
        rt = runtimes[arm.name]
        local = local_accum_steps(arm.train.grad_accum_steps, world_size, arm=arm.name)
        print(f"\n== arm {arm.name} ==")
        print(f"parameters: {model.num_params():,} ({model.num_params(exclude_embedding=True):,} without the "
              f"input embedding); FLOPs/token {model.flops_per_token(arm.model.context_length):,}")
        n_ids = TOKENIZER_VOCAB[cfg.tokenizer]
        pad = arm.model.vocab_size - n_ids
        print(f"vocabulary: {arm.model.vocab_size:,} embedding rows = {n_ids:,} {cfg.tokenizer} ids"
              f"{f' + {pad:,} rows of padding (never a target, never sampled)' if pad else ''}")
        trained = arm.steps() * arm.tokens_per_step()
        passes = "" if splits is None else f" ({passes_over(trained, splits.train.numel())})"
        print(f"tokens per step: {arm.tokens_per_step():,}; steps: {arm.steps():,}; tokens trained: {trained:,}"
              f"{passes}")
        on_cuda = ""
        if rt.device.type != "cuda" and arm.train.device == "auto":  # what the same YAML does on a GPU machine
            precision, compile_ = precision_and_compile(arm, "cuda")
            on_cuda = f" (on a CUDA machine: cuda, {precision}, compile {'on' if compile_ else 'off'})"
        print(f"runtime: {rt.device.type}, {rt.precision}, compile {'on' if rt.compile else 'off'}{on_cuda}; "
              f"{local} micro-batch{'es' if local > 1 else ''} of {arm.train.micro_batch_size} per process and step")
    if cfg.sweep.active:
        print_sweep_plan(cfg)


def passes_over(tokens: int, train_tokens: int) -> str:
    """How many times `tokens` of training windows cover the training split, said for a reader: windows are
    drawn at random positions, so this is an average, not a count of epochs run in order."""
    passes = tokens / train_tokens
    what = f"the {train_tokens:,} training tokens"
    if passes < 0.995:
        return f"{passes:.1%} of one pass over {what}" if passes >= 0.001 else f"under 0.1% of one pass over {what}"
    return f"about {passes:,.{0 if passes >= 9.95 else 1}f} passes over {what}"


def print_sweep_plan(cfg) -> None:
    """The units a sweep trains: the search, then the main stage as if each arm's current lr won."""
    from training import sweep

    search = sweep.search_units(cfg)
    best = {(a.name, b): a.optim.lr for a in cfg.arms for b in [None, *sweep.budgets_of(cfg, a)]}
    main = [u for u in sweep.main_units(cfg, best) if u.key not in {s.key for s in search}]

    def cost(unit) -> int:  # tokens this unit trains itself (a branch starts at its trunk's step)
        return (unit.arm.steps() - (unit.branch_step or 0)) * unit.arm.tokens_per_step()

    print(f"\n== sweep: {len(search)} search + {len(main)} main runs (main runs shown with each arm's optim.lr; "
          f"the search replaces it for arms in sweep.lr) ==")
    for unit in search + main:
        branch = f", branch of {unit.branch_of} at step {unit.branch_step}" if unit.branch_of else ""
        print(f"{unit.stage:9s} {unit.key}: {unit.arm.steps():,} steps, {cost(unit):,} tokens trained{branch}")
    total = sum(cost(u) for u in search + main)
    print(f"tokens trained in all: {total:,} (the chosen search runs are reused by the main stage; the count "
          f"assumes each arm's optim.lr is chosen)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    from training import distributed
    from training.data import DataError
    from training.data.corpus import load_splits
    from training.data.tokenizer import TokenizerError
    from training.errors import UsageError
    from training.experiment import load_experiment
    from training.session import check_runtime, run_experiment
    from training.trainer import StopFlag
    from training.typed_yaml import ConfigError

    try:
        cfg = load_experiment(args.experiment, args.overrides, arms=args.arms, seeds=args.seeds)
        launch = args.nproc_per_node if args.nproc_per_node and not distributed.under_torchrun() else None
        world_size = launch or int(os.environ.get("WORLD_SIZE", "1"))
        runtimes = None
        if launch or args.dry_run:  # the session checks a real run itself; a dry run checks the same
            runtimes = check_runtime(cfg, distributed.DistInfo(world_size=world_size),
                                     processes=f"--nproc-per-node {launch}" if launch else None)
        if launch and not args.dry_run:
            return relaunch_under_torchrun(argv, launch)
        if args.dry_run:
            _check_tracking_server()
        context_length = max(arm.model.context_length for arm in cfg.arms)
        if args.dry_run and cfg.data.hf is not None and not _hf_prepared(cfg.data, cfg.tokenizer):
            dry_run(cfg, None, runtimes, world_size)  # a dry run does not stream and tokenize a dataset (hours)
            return 0
        splits = load_splits(cfg.data, cfg.tokenizer, context_length)
        if args.dry_run:
            dry_run(cfg, splits, runtimes, world_size)
            return 0
        device_type = "cuda" if any(
            a.train.device == "cuda" or (a.train.device == "auto" and _cuda()) for a in cfg.arms) else "cpu"
        if device_type == "cpu":  # CPU steps reuse their buffers' pages (2x faster on small models)
            from training.allocator import keep_freed_memory

            keep_freed_memory()
        dist = distributed.setup(device_type)
        stop = StopFlag()
        previous = {sig: signal.signal(sig, stop.request) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:  # SIGTERM / SIGINT (cluster preemption, Ctrl-C): checkpoint at the next step, then exit
            return run_experiment(cfg, splits, dist, progress=not args.no_progress, force=args.force,
                                  resume="never" if args.no_resume else (args.resume or "auto"), stop=stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            distributed.teardown()
    except (ConfigError, DataError, TokenizerError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _check_tracking_server() -> None:
    """A dry run checks that an MLflow tracking server answers, as a run does before training (a local
    store is not opened: that would create it)."""
    from training.errors import UsageError
    from training.tracking import Tracker, TrackingError, tracking_uri

    if tracking_uri().startswith(("http://", "https://")):
        try:
            Tracker().check()
        except TrackingError as err:
            raise UsageError(str(err)) from None


def _hf_prepared(data, tokenizer: str) -> bool:
    """Whether a `data.hf` dataset is already prepared in the cache (a complete manifest)."""
    import json

    from training.data.corpus import hf_source
    from training.data.prepare import cache_folder
    from training.data.shards import MANIFEST

    manifest = cache_folder(*hf_source(data, tokenizer)) / MANIFEST
    try:
        return bool(json.loads(manifest.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
