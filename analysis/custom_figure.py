"""Example: build your own figure from the tidy frame.

    python -m analysis.custom_figure --experiment verdict_vs_baseline [--out DIR]

Loads every run of the experiment into one tidy pandas frame (one row per logged value: columns
experiment, parent_run_id, run_id, arm, seed, budget, context_length, step, tokens, elapsed_s,
metric, value) and plots the validation loss of every individual seed against training time, in
the same style as the built-in figures. Copy this file and change the middle part.
"""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.figure import Figure

from analysis import record
from analysis.errors import EXIT_BAD_INPUT, AnalysisError, OneLineParser
from analysis.style import arm_styles, loss_label, save_figure, style_context
from analysis.load import load_experiment
from analysis.report import default_out_dir


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m analysis.custom_figure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", "-e", required=True)
    parser.add_argument("--tracking-uri")
    parser.add_argument("--parent", help="one parent run id (default: all)")
    parser.add_argument("--out", type=Path, help="default: figures/<experiment>/")
    args = parser.parse_args(argv)
    try:
        data = load_experiment(args.experiment, parent_run_id=args.parent,
                               tracking_uri=args.tracking_uri)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    frame = data.frame                       # the tidy frame
    val = frame[frame["metric"] == record.VAL_LOSS]
    styles = arm_styles(data.arms, data.baseline_arm)   # same look as the built-in figures

    with style_context():
        fig = Figure(figsize=(5.0, 3.3))
        ax = fig.subplots()
        for (arm, seed, budget), run in val.groupby(["arm", "seed", "budget"], dropna=False):
            st = styles[arm]
            ax.plot(run["elapsed_s"], run["value"], color=st.color, linestyle=st.linestyle,
                    marker=st.marker, markevery=0.1, linewidth=1.0, alpha=0.8,
                    label=f"{arm}, seed {seed}, {budget} tokens")
        for target in data.targets:
            ax.axhline(target, color="0.4", linewidth=0.8, linestyle=":")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel(loss_label(data.loss_unit))
        ax.legend(loc="upper right", fontsize=6)

    out = args.out if args.out is not None else default_out_dir(args.experiment)
    for path in save_figure(fig, out, "custom_val_loss_per_seed_vs_time"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
