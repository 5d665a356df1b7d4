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
