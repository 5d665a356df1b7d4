"""The one argument parser of the training tools (`python -m training.sample`, `.evaluate`, `.bench`, `.data`):
bad input is one line on stderr, `error: MESSAGE (see PROG --help)`, and exit code 2, instead of argparse's
usage block. (analysis/cli.py has its own: the analysis package imports nothing from training.)"""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


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
