"""What the training tools' command lines share (`python -m training.sample`, `.evaluate`, `.bench`, `.data`):
the one argument parser of datgpt (`OneLineParser`, from analysis/errors.py: bad input is one line on stderr
and exit code 2) and the options that say where a tool's model comes from."""

from __future__ import annotations

import argparse

from analysis.errors import EXIT_BAD_INPUT, OneLineParser

__all__ = ["EXIT_BAD_INPUT", "OneLineParser", "add_model_options"]


def add_model_options(parser: argparse.ArgumentParser, run_help: str) -> None:
    """Where a tool's model comes from (`--checkpoint SPEC` or `--run RUN_ID`, one of them), the device, and
    the folder checkpoints are looked up in: the options training.sample and training.evaluate share."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="SPEC",
                        help="a step_*.pt file, an arm's checkpoint folder, or EXPERIMENT/ARM[-seedN]")
    source.add_argument("--run", metavar="RUN_ID", help=run_help)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto = cuda when available")
    parser.add_argument("--checkpoint-dir", default="checkpoints",
                        help="where EXPERIMENT/ARM and run ids are looked up (default checkpoints)")
