"""``python -m analysis``: regenerate the figures and tables of an experiment from MLflow.

Exit codes: 0 success; 2 bad arguments or an analysis error (unknown experiment, no runs, missing
tracking store), reported as one line on stderr without a traceback; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from analysis.errors import EXIT_BAD_INPUT, AnalysisError, AnalysisWarning, OneLineParser

PROG = "python -m analysis"

DESCRIPTION = """\
Summarise a datgpt experiment from MLflow: tokens (and seconds) to each target validation loss,
speedups vs the baseline arm with confidence intervals over paired seeds (Fieller), thesis figures
(PNG 300 dpi + PDF) and tables (CSV, Markdown, LaTeX/booktabs).

Runs: by default every child run of the experiment (all runner invocations; when the same
arm/seed/budget/context was run twice the newest run is used). --parent RUN_ID (or 'latest')
restricts to one invocation. Runs that are not FINISHED or have no val/loss are skipped with a
warning, but a run that diverged counts (a seed that did not reach what it had not reached by then).
Tracking store: --tracking-uri, else $MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db
in the current folder)."""

EPILOG = """\
examples:
  python -m analysis figures --experiment verdict_vs_baseline
  python -m analysis figures --experiment verdict_vs_baseline --out thesis/fig --parent latest
  python -m analysis summary --experiment verdict_vs_baseline --format latex
  python -m analysis list"""


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").strip("[]").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one target")
    return values


def _level(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if v > 1:  # allow "95"
        v /= 100.0
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1) or (0, 100), got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{figures,summary,list}", required=True,
                                parser_class=OneLineParser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--experiment", "-e", required=True, metavar="NAME",
                       help="MLflow experiment name (the YAML's tracking.experiment, "
                            "default its name)")
        p.add_argument("--parent", metavar="RUN_ID",
                       help="only this parent run (invocation); 'latest' = the newest; "
                            "default: all parent runs")
        p.add_argument("--tracking-uri", metavar="URI",
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                            "else sqlite:///mlflow.db)")
        p.add_argument("--targets", type=_float_list, metavar="L1,L2",
                       help="target validation losses "
                            "(default: the parent run's datgpt.targets tag)")
        p.add_argument("--baseline", metavar="ARM",
                       help="baseline arm for speedups "
                            "(default: the parent run's datgpt.baseline_arm)")
        p.add_argument("--mode", choices=("auto", "curve", "budget"), default="auto",
                       help="tokens-to-target method; auto = budget mode when every arm has "
                            "runs at >= 2 budgets, else curve mode (default: auto)")
        p.add_argument("--ci-level", type=_level, default=0.95, metavar="P",
                       help="confidence level of the speedups' intervals (default: 0.95)")
        p.add_argument("--include-unfinished", action="store_true",
                       help="also use child runs that are RUNNING, FAILED or KILLED")

    p_fig = sub.add_parser("figures", help="write every figure and table, print the summary",
                           description="Write every figure (PNG 300 dpi + PDF) and the summary "
                                       "table (CSV, Markdown, LaTeX) to DIR and print the summary.")
    common(p_fig)
    p_fig.add_argument("--out", "-o", type=Path, metavar="DIR",
                       help="output folder (default: figures/<experiment>/)")

    p_sum = sub.add_parser("summary", help="print the summary table only (writes nothing)",
                           description="Print the summary table; writes nothing.")
    common(p_sum)
    p_sum.add_argument("--format", choices=("markdown", "csv", "latex"), default="markdown",
                       help="output format (default: markdown)")

    p_list = sub.add_parser("list", help="list experiments, or the parent runs of one",
                            description="List the experiments in the store, or with --experiment "
                                        "the parent runs (invocations) of one.")
    p_list.add_argument("--experiment", "-e", metavar="NAME")
    p_list.add_argument("--tracking-uri", metavar="URI")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
    stream = sys.stderr
    if issubclass(category, AnalysisWarning):
        stream.write(f"warning: {message}\n")
    else:
        stream.write(warnings.formatwarning(message, category, filename, lineno, line))


def _common_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        parent_run_id=args.parent,
        tracking_uri=args.tracking_uri,
        targets=args.targets,
        baseline_arm=args.baseline,
        mode=args.mode,
        level=args.ci_level,
        include_unfinished=args.include_unfinished,
    )


def _cmd_figures(args: argparse.Namespace) -> int:
    from analysis.report import build_report, default_out_dir
    from analysis.tables import format_summary

    out = args.out if args.out is not None else default_out_dir(args.experiment)
    kw = _common_kwargs(args)
    report = build_report(args.experiment, out, kw.pop("parent_run_id"), kw.pop("tracking_uri"),
                          **kw)
    print(format_summary(report.summary))
    for name, why in report.skipped_figures:
        print(f"skipped figure {name}: {why}")
    print(f"wrote {len(report.files)} files to {out}:")
    for path in report.files:
        print(f"  {path}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from analysis.report import summarize_experiment
    from analysis.tables import format_summary, to_latex

    kw = _common_kwargs(args)
    _data, summary = summarize_experiment(args.experiment, kw.pop("parent_run_id"),
                                         kw.pop("tracking_uri"), **kw)
    if args.format == "csv":
        sys.stdout.write(summary.to_csv(index=False))
    elif args.format == "latex":
        sys.stdout.write(to_latex(summary, experiment=args.experiment))
    else:
        sys.stdout.write(format_summary(summary))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    import datetime as dt

    from analysis.store import list_experiments, list_parents

    if not args.experiment:
        for name in list_experiments(args.tracking_uri):
            print(name)
        return 0
    parents = list_parents(args.experiment, args.tracking_uri)
    if not parents:
        print(f"(experiment {args.experiment!r} has no parent runs)")
    for p, n in parents:
        when = (dt.datetime.fromtimestamp(p.start_time / 1000).strftime("%Y-%m-%d %H:%M")
                if p.start_time else "?")
        commit = (p.git_commit or "?")[:10]
        print(f"{p.run_id}  {when}  {p.status:<8}  {n} child runs  commit {commit}  "
              f"targets {p.targets}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (the parser exits with code 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    handlers = {"figures": _cmd_figures, "summary": _cmd_summary, "list": _cmd_list}
    with warnings.catch_warnings():
        warnings.simplefilter("always", AnalysisWarning)
        warnings.showwarning = _show_warning
        try:
            return handlers[args.command](args)
        except AnalysisError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as exc:  # e.g. the output folder cannot be written
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - MLflow errors (e.g. server unreachable)
            if type(exc).__name__ == "MlflowException" or type(exc).__module__.startswith("mlflow"):
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                print(f"error: MLflow: {msg}", file=sys.stderr)
                return EXIT_BAD_INPUT
            raise


def run() -> NoReturn:
    sys.exit(main())
