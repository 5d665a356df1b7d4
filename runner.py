"""Train every arm of an experiment YAML, log them to MLflow, and print the comparison.

    python runner.py experiments/verdict_vs_baseline.yaml [--set key.path=value ...]
                     [--arms gpt,ngpt] [--seeds 0,1] [--nproc-per-node N] [--dry-run]

Started by `torchrun ... runner.py EXPERIMENT.yaml` it trains in place (DDP); with `--nproc-per-node N`
it relaunches itself under torchrun. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
if str(PROJECT_DIR) not in sys.path:  # `python /elsewhere/runner.py` and torchrun workers
    sys.path.insert(0, str(PROJECT_DIR))

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input found by the runner itself (arguments, data, runtime); exit code 2."""


def _csv(kind):
    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return [kind(s) for s in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}")
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
    parser = argparse.ArgumentParser(
        prog="runner.py", description="Train the arms of an experiment YAML (baseline GPT vs nGPT) and "
                                      "log them to MLflow.")
    parser.add_argument("experiment", help="experiment YAML, e.g. experiments/verdict_vs_baseline.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config key, e.g. --set train.tokens=1e6 --set arms.ngpt.optim.lr=3e-3")
    parser.add_argument("--arms", type=_csv(str), help="train only these arms, e.g. gpt,ngpt")
    parser.add_argument("--seeds", type=_csv(int), help="seeds to run instead of the YAML's, e.g. 0,1,2")
    parser.add_argument("--nproc-per-node", type=_positive_int,
                        help="relaunch under torchrun with this many processes on this machine")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each arm's resolved config, parameters, tokens per step and steps; train nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
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


def dry_run(cfg, splits) -> None:
    import dataclasses

    import torch
    import yaml

    from models import build_model
    from training.config import arm_to_dict

    print(f"experiment {cfg.name!r} from {cfg.source}: seeds {cfg.seeds}, targets {cfg.targets}")
    print(f"data: {splits.source} -> {splits.train.numel():,} train / {splits.val.numel():,} validation tokens "
          f"({cfg.tokenizer})")
    print(f"shared: {yaml.safe_dump({'data': dataclasses.asdict(cfg.data), 'tracking': dataclasses.asdict(cfg.tracking)}, sort_keys=False).strip()}")
    for arm in cfg.arms:
        with torch.device("meta"):
            model = build_model(arm.model)
        print(f"\n== arm {arm.name} ==")
        print(yaml.safe_dump(arm_to_dict(arm), sort_keys=False).rstrip())
        print(f"parameters: {model.num_params():,} ({model.num_params(exclude_embedding=True):,} without the "
              f"input embedding); FLOPs/token {model.flops_per_token(arm.model.context_length):,}")
        print(f"tokens per step: {arm.tokens_per_step():,}; steps: {arm.steps():,}; "
              f"tokens trained: {arm.steps() * arm.tokens_per_step():,}")


def run(cfg, splits, dist, progress: bool) -> int:
    import torch

    from training.config import flatten
    from training.summary import format_table, summary_frame
    from training.tracking import (MLFLOW_PARENT_TAG, TAG_ARM, TAG_BASELINE, TAG_CONFIG_HASH, TAG_GIT_COMMIT,
                                   TAG_FAILURE, TAG_KIND, TAG_ROLE, TAG_SEED, TAG_TARGETS, NullLogger, Tracker,
                                   TrackingError, git_commit)
    from training.trainer import TrainingDiverged, measure_peak_flops, resolve_runtime, train_arm

    try:
        runtimes = {arm.name: resolve_runtime(arm, dist) for arm in cfg.arms}
    except RuntimeError as err:
        raise UsageError(str(err)) from None
    for arm in cfg.arms:
        if arm.train.grad_accum_steps % dist.world_size:
            raise UsageError(f"train.grad_accum_steps: {arm.train.grad_accum_steps} (arm {arm.name}) is not "
                             f"divisible by the {dist.world_size} processes")

    tracker = parent_id = None
    if dist.is_main:
        tracker = Tracker()
        try:
            tracker.check()
            experiment_id = tracker.experiment_id(cfg.experiment_name)
        except TrackingError as err:
            raise UsageError(str(err)) from None
        run_name = cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent_id = tracker.start_run(
            experiment_id, run_name,
            tags={TAG_ROLE: "parent", TAG_TARGETS: str(list(cfg.targets)), TAG_BASELINE: cfg.baseline_arm,
                  TAG_CONFIG_HASH: cfg.config_hash(), TAG_GIT_COMMIT: git_commit(PROJECT_DIR)},
            params={"name": cfg.name, "seeds": cfg.seeds, "arms": [a.name for a in cfg.arms],
                    "targets": cfg.targets, "world_size": dist.world_size,
                    **flatten({"data": cfg.to_dict()["data"]}), "tokenizer": cfg.tokenizer})
        tracker.log_text(parent_id, cfg.to_yaml(), "config/resolved.yaml")
        print(f"MLflow: experiment {cfg.experiment_name!r}, parent run {parent_id} ({tracker.uri})")

    results, status = [], "FINISHED"
    peak_cache: dict = {}
    try:
        for seed in cfg.seeds:
            for arm in cfg.arms:
                runtime = runtimes[arm.name]
                peak = arm.train.peak_flops
                if peak is None and runtime.device.type == "cuda":
                    peak = peak_cache.setdefault("measured", measure_peak_flops(runtime.device))
                logger, child_id = NullLogger(), None
                if dist.is_main:
                    params = {**flatten(cfg.to_dict()["arms"][arm.name]), **flatten({"data": cfg.to_dict()["data"]}),
                              "tokenizer": cfg.tokenizer, "arm": arm.name, "seed": seed,
                              "derived.tokens_per_step": arm.tokens_per_step(), "derived.steps": arm.steps(),
                              "derived.tokens_trained": arm.steps() * arm.tokens_per_step(),
                              "derived.world_size": dist.world_size, "derived.device": str(runtime.device),
                              "derived.precision": runtime.precision, "derived.compile": runtime.compile,
                              "derived.peak_flops": peak, "derived.torch_version": torch.__version__}
                    child_id = tracker.start_run(
                        experiment_id, f"{arm.name}-seed{seed}",
                        tags={MLFLOW_PARENT_TAG: parent_id, TAG_ROLE: "child", TAG_ARM: arm.name,
                              TAG_SEED: str(seed), TAG_KIND: arm.model.kind},
                        params=params)
                    logger = tracker.logger(child_id)
                try:
                    result = train_arm(arm, seed, splits, dist, logger, runtime=runtime, peak_flops=peak,
                                       progress=progress)
                except TrainingDiverged as err:  # this arm stops; the others still run
                    if dist.is_main:
                        print(f"\nwarning: {err}; run marked FAILED", file=sys.stderr)
                        tracker.set_tag(child_id, TAG_FAILURE, str(err))
                    logger.close("FAILED")
                    continue
                except BaseException:
                    logger.close("KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED")
                    raise
                if dist.is_main:
                    logger.log(result.evals[-1].step, {"summary/n_params": result.n_params})
                logger.close("FINISHED")
                results.append(result)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if dist.is_main and status != "FINISHED":
            tracker.finish(parent_id, status)

    if dist.is_main:
        table = summary_frame(results, cfg.targets, cfg.baseline_arm)
        text = format_table(table)
        print(f"\n{cfg.name}: {len(results)} runs; tokens to target = first crossing of the validation loss "
              f"(linear interpolation); speedup = {cfg.baseline_arm} tokens / arm tokens")
        print(text)
        tracker.log_text(parent_id, text + "\n", "summary/summary.txt")
        tracker.log_text(parent_id, table.to_csv(index=False), "summary/summary.csv")
        log_report(tracker, cfg, parent_id)
        tracker.finish(parent_id, "FINISHED")
        print(f"\nFigures and tables: python -m analysis figures --experiment {cfg.experiment_name}   "
              f"Runs: mlflow ui")
    return 0


def log_report(tracker, cfg, parent_id: str) -> None:
    """Build the analysis figures of this invocation and attach them to the parent run."""
    try:
        from analysis.report import build_report

        with tempfile.TemporaryDirectory() as folder:
            build_report(cfg.experiment_name, Path(folder), parent_run_id=parent_id, tracking_uri=tracker.uri)
            tracker.log_artifacts(parent_id, Path(folder), "report")
    except Exception as err:  # figures are a convenience here; the runs themselves are safe in MLflow
        print(f"warning: could not build the figures ({type(err).__name__}: {err}); rerun "
              f"`python -m analysis figures --experiment {cfg.experiment_name}`", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    from training import distributed
    from training.config import ConfigError, load_experiment
    from training.data import DataError, load_splits
    from training.tokenizer import TokenizerError

    try:
        cfg = load_experiment(args.experiment, args.overrides, arms=args.arms, seeds=args.seeds)
        if args.nproc_per_node and not distributed.under_torchrun() and not args.dry_run:
            for arm in cfg.arms:
                if arm.train.grad_accum_steps % args.nproc_per_node:
                    raise UsageError(f"train.grad_accum_steps: {arm.train.grad_accum_steps} (arm {arm.name}) "
                                     f"is not divisible by --nproc-per-node {args.nproc_per_node}")
            return relaunch_under_torchrun(argv, args.nproc_per_node)
        context_length = max(arm.model.context_length for arm in cfg.arms)
        splits = load_splits(cfg.data, cfg.tokenizer, context_length)
        if args.dry_run:
            dry_run(cfg, splits)
            return 0
        device_type = "cuda" if any(
            a.train.device == "cuda" or (a.train.device == "auto" and _cuda()) for a in cfg.arms) else "cpu"
        dist = distributed.setup(device_type)
        try:
            return run(cfg, splits, dist, progress=not args.no_progress)
        finally:
            distributed.teardown()
    except (ConfigError, DataError, TokenizerError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
