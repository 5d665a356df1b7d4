"""Downstream accuracy of a checkpoint or an MLflow run through lm-evaluation-harness.

    python -m training.evaluate --checkpoint SPEC | --run RUN_ID --tasks T1,T2 [--limit N] [--batch-size 16]
                                [--device auto|cpu|cuda] [--checkpoint-dir checkpoints] [--output FILE]
                                [--no-progress]

`--checkpoint` takes what `python -m training.sample` takes (a checkpoint file, an arm's folder, or
`EXPERIMENT/ARM[-seedN]` under `--checkpoint-dir`, seed 0 unless named); `--run` an MLflow child run id:
its checkpoint, else the model logged to the run (training/pretrained.py, training/sample.py). Tasks
are lm-eval task names or tags, zero-shot with the tasks' own settings; the local smoke-test tasks
`verdict_lambada` and `verdict_choice` (tag `datgpt_local`) need no network (training/eval_tasks).

lm-eval's table (task, metric, value, standard error) goes to stdout, what was loaded and the time to
stderr. With `--run`, the metrics are logged to that run as `eval/<task>/<metric>` at the checkpoint's
optimizer step (with `tokens` at that step), and lm-eval's results JSON as the artifact
`eval/step_XXXXXXXX_<tasks>.json` (analysis/record.py); `--output FILE` writes the same JSON to a file.
Nothing is logged or written unless the whole evaluation succeeded.

Bad input (a bad option, a missing checkpoint or run, an unknown task, lm-eval not installed) is one
line on stderr and exit code 2; so is a task whose data is on the Hugging Face Hub when the Hub
cannot be reached (the line names the task and the network).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from training.atomic import atomic_write
from training.cli import OneLineParser, add_model_options
from training.data.tokenizer import TokenizerError
from training.lm_eval_adapter import EvalSetupError, require_lm_eval
from training.pretrained import RUN_ID, PretrainedError, resolve


class EvaluateError(ValueError):
    """Bad input to the command; one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m training.evaluate",
                           description="Downstream accuracy of a datgpt checkpoint or MLflow run (lm-eval).")
    add_model_options(parser, run_help="an MLflow child run id: evaluate it and log to it")
    parser.add_argument("--tasks", required=True, metavar="T1,T2",
                        help="lm-eval tasks or tags, comma-separated (offline: verdict_lambada,verdict_choice)")
    parser.add_argument("--limit", type=int, default=None, help="at most N documents per task (default all)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    parser.add_argument("--output", type=Path, default=None, help="also write lm-eval's results JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _load(args) -> tuple[torch.nn.Module, str, str, int | None, int | None]:
    """The model, where it came from, its tokenizer, and its optimizer step and tokens (None when unknown)."""
    if args.checkpoint is not None:
        try:
            pretrained = resolve(args.checkpoint, args.checkpoint_dir, seed=0)
            model = pretrained.build_model()
        except PretrainedError as err:
            raise EvaluateError(f"--checkpoint: {err}") from None
    else:
        try:
            pretrained = resolve(args.run, args.checkpoint_dir)
            model = pretrained.build_model()
        except PretrainedError as err:
            from training.sample import logged_model, run_tokenizer

            model = logged_model(args.run)
            if model is None:
                raise EvaluateError(f"--run: {err}; nor has the run a logged model") from None
            step, tokens = _last_step(args.run)
            return model, f"MLflow model runs:/{args.run}/model", run_tokenizer(args.run), step, tokens
    where = f"{pretrained.path} (step {pretrained.step}, {pretrained.tokens:,} tokens"
    where += f"; arm {pretrained.arm} seed {pretrained.seed})" if pretrained.arm else ")"
    return model, where, pretrained.tokenizer, pretrained.step, pretrained.tokens


def _client():
    import mlflow
    from mlflow import MlflowClient

    from analysis.errors import TrackingStoreError
    from analysis.store import check_local_store

    uri = mlflow.get_tracking_uri()
    try:
        check_local_store(uri)  # never create an empty store to log into
    except TrackingStoreError as err:
        raise EvaluateError(f"--run: {err}") from None
    return MlflowClient(uri), uri


def _check_run(run_id: str) -> None:
    if not RUN_ID.match(run_id):
        raise EvaluateError(f"--run: {run_id!r} is not an MLflow run id (32 hex digits)")
    client, uri = _client()
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - unknown run, unreachable server
        raise EvaluateError(f"--run: no run {run_id} in the tracking store {uri}") from None
    if run.info.lifecycle_stage != "active":
        raise EvaluateError(f"--run: run {run_id} is deleted")


def _last_step(run_id: str) -> tuple[int | None, int | None]:
    """The last logged step of a run's `tokens` metric, and its value (a run without a checkpoint)."""
    client, _ = _client()
    history = client.get_metric_history(run_id, "tokens")
    if not history:
        return None, None
    last = max(history, key=lambda m: (m.step, m.timestamp))
    return int(last.step), int(last.value)


def _log_to_run(run_id: str, metrics: dict[str, float], step: int, tokens: int | None, results_text: str,
                tasks: list[str]) -> str:
    from mlflow.entities import Metric

    from analysis.record import eval_results_artifact
    from training.run_logger import MAX_METRICS_PER_BATCH

    client, _ = _client()
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, v in metrics.items()]
    if tokens is not None:
        batch.append(Metric("tokens", float(tokens), now, step))
    for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=batch[i:i + MAX_METRICS_PER_BATCH])
    artifact = eval_results_artifact(step, tasks)
    client.log_text(run_id, results_text, artifact)
    return artifact


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if not tasks:
            raise EvaluateError("--tasks: give at least one lm-eval task, e.g. verdict_lambada,verdict_choice")
        if len(set(tasks)) != len(tasks):
            raise EvaluateError(f"--tasks: duplicate tasks in {args.tasks}")
        if args.limit is not None and args.limit < 1:
            raise EvaluateError(f"--limit: must be at least 1, got {args.limit}")
        if args.batch_size < 1:
            raise EvaluateError(f"--batch-size: must be at least 1, got {args.batch_size}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise EvaluateError("--device: cuda requested but torch sees no CUDA device")
        if args.output is not None and args.output.is_dir():
            raise EvaluateError(f"--output: {args.output} is a folder; give a file name")
        require_lm_eval()
        from training.downstream import check_task_names

        check_task_names(tasks)  # an unknown name: one line before anything is loaded
        if args.run is not None:
            args.run = args.run.strip()
            _check_run(args.run)
        device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                              else "cpu")
        model, where, tokenizer, step, tokens = _load(args)
        from training.downstream import check_tasks, evaluate_model, format_results, metrics_of, results_json

        manager = check_tasks(tasks)
        print(f"model: {where}; {tokenizer} tokenizer; tasks {', '.join(tasks)}"
              f"{f', at most {args.limit} documents each' if args.limit else ''}; batch {args.batch_size}, "
              f"{device.type}", file=sys.stderr)
        start = time.perf_counter()
        results = evaluate_model(model.to(device), tasks, manager=manager, limit=args.limit,
                                 batch_size=args.batch_size, device=device, tokenizer=tokenizer,
                                 progress=not args.no_progress)
        seconds = time.perf_counter() - start
    except (EvaluateError, EvalSetupError, TokenizerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_results(results))
    print(f"evaluated in {seconds:.1f} s", file=sys.stderr)
    text = results_json(results)
    if args.output is not None:
        atomic_write(args.output, lambda f: f.write(text), text=True)
        print(f"results: {args.output}", file=sys.stderr)
    if args.run is not None:
        metrics = metrics_of(results)
        if step is None:
            print(f"warning: run {args.run} logged no tokens; its metrics go to step 0", file=sys.stderr)
        artifact = _log_to_run(args.run, metrics, step or 0, tokens, text, tasks)
        print(f"MLflow: {len(metrics)} metrics logged to run {args.run} at step {step or 0}"
              f"{f' ({tokens:,} tokens)' if tokens is not None else ''}; results in artifact {artifact}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
