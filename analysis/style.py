"""The figures' style kit: one matplotlib style (:data:`STYLE`), one per-arm style (:func:`arm_styles`:
colour *and* line style *and* marker, readable in black and white; the baseline is black and solid), axis
labels and tick formats, target lines, captions, and :func:`save_figure` (PNG at 300 dpi and a PDF with
TrueType fonts and no creation date, so reruns give identical files). Every figure module draws with it:
analysis/figures.py, sweep_figures.py, accuracy.py, diagnostics.py, custom_figure.py, the notebook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.tables import format_target

__all__ = [
    "STYLE",
    "ArmStyle",
    "NotApplicable",
    "arm_styles",
    "format_tokens",
    "save_figure",
    "style_context",
]

# Okabe-Ito palette (colour-blind safe), baseline first in black
_COLORS = ["#000000", "#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
_LINESTYLES: list[Any] = ["-", "--", "-.", ":", (0, (5, 1.5, 1, 1.5, 1, 1.5)), (0, (8, 2))]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]

STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.labelsize": 9,
    "axes.titlesize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.5,
    "errorbar.capsize": 2.5,
    "legend.frameon": False,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "figure.dpi": 100,
}

TOKENS_LABEL = "training tokens"


def loss_label(unit: str = "token", what: str = "validation") -> str:
    """An axis label with the loss's unit: nats per token (GPT-2 BPE) or per byte (the bytes tokenizer), as
    the runs' parent tag ``datgpt.loss_unit`` says (``ExperimentData.loss_unit``)."""
    return f"{what} loss (nats/{unit})"
_TARGET_LINE = dict(color="0.35", linewidth=0.8, linestyle=(0, (1, 2)), zorder=1)
_MAX_LINE_POINTS = 4000


@dataclass(frozen=True)
class ArmStyle:
    color: str
    linestyle: Any
    marker: str

    def line_kwargs(self) -> dict[str, Any]:
        return dict(color=self.color, linestyle=self.linestyle, marker=self.marker)


class NotApplicable(Exception):
    """Raised by a figure builder when its figure does not apply to the data."""


def arm_styles(arms: Sequence[str], baseline_arm: str | None = None) -> dict[str, ArmStyle]:
    """One distinct (colour, line style, marker) per arm; the baseline gets black and solid."""
    ordered = sorted(dict.fromkeys(arms), key=lambda a: (a != baseline_arm, str(a)))
    return {
        arm: ArmStyle(_COLORS[i % len(_COLORS)], _LINESTYLES[i % len(_LINESTYLES)],
                      _MARKERS[i % len(_MARKERS)])
        for i, arm in enumerate(ordered)
    }


def format_tokens(value: float, _pos: Any = None) -> str:
    """1500000 -> '1.5M', 2e9 -> '2B', 50000 -> '50k'."""
    if value is None or not math.isfinite(value):
        return ""
    v = abs(value)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


@contextmanager
def style_context():
    """``with style_context(): ...`` applies the shared figure style (used by every figure here)."""
    with matplotlib.rc_context(STYLE):
        yield


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` (300 dpi) and ``stem.pdf`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    with style_context():
        fig.savefig(png, dpi=300, metadata={"Software": None})
        fig.savefig(pdf, metadata={"CreationDate": None, "Creator": None, "Producer": None})
    return [png, pdf]


def thin(x: np.ndarray, y: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    n = len(x)
    if n <= _MAX_LINE_POINTS:
        return (x, y, *others)
    idx = np.unique(np.r_[np.linspace(0, n - 1, _MAX_LINE_POINTS).astype(int), n - 1])
    return tuple(np.asarray(a)[idx] for a in (x, y, *others))


def markevery(i: int) -> tuple[float, float]:
    # ~10 markers per curve, staggered between arms so they do not sit on top of each other
    return (0.02 * (i % 5), 0.1)


def caption(fig: Figure, text: str) -> None:
    """A caption-like note under everything drawn so far (call it last), saying what the figure's bands,
    bars and marks are; `savefig.bbox` is tight, so it is kept in the saved file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    bottom = fig.get_tightbbox(canvas.get_renderer()).y0 / fig.get_figheight()  # inches -> figure fraction
    fig.text(0.5, bottom - 0.08 / fig.get_figheight(), text, ha="center", va="top", fontsize=7,
             color="0.25", linespacing=1.3)


def target_lines(ax: Any, targets: Sequence[float], where: str = "left") -> None:
    """Dotted horizontal line per target, labelled at the left (curves fall from the upper left)."""
    for t in targets:
        ax.axhline(t, **_TARGET_LINE)
        x, ha, dx = (0.0, "left", 3) if where == "left" else (1.0, "right", -3)
        ax.annotate(f"target {format_target(t)}", xy=(x, t), xycoords=("axes fraction", "data"),
                    xytext=(dx, 1.5), textcoords="offset points", ha=ha, va="bottom",
                    fontsize=7, color="0.25")


def tokens_axis(axis: Any, log: bool = False) -> None:
    axis.set_major_formatter(FuncFormatter(format_tokens))
    if log:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())


def ordered_arms(arms: Sequence[str], styles: dict[str, ArmStyle]) -> list[str]:
    order = list(styles)
    return sorted(dict.fromkeys(arms), key=lambda a: order.index(a) if a in order else len(order))
