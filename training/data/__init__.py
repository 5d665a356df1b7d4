"""Corpora and token shards: everything between a corpus on disk (or on the Hub) and the batches training reads.

    corpus.py     the built-in corpora, the fixed train/validation split, deterministic batches (torch)
    tokenizer.py  the GPT-2 tokenizer through tiktoken, working offline
    shards.py     the token-shard file format and memory-mapped reading of a prepared folder
    sources.py    where documents come from: local files and folders, or a `datasets` dataset
    prepare.py    tokenize a source into shards (process pool, resumable, one writer per folder: the lock)
    cli.py        `python -m training.data prepare ...` (this package's __main__; imports no torch)

This module holds what all of them share: the data folder and the error they raise.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DATGPT_DATA_DIR"


class DataError(RuntimeError):
    """A corpus that cannot be found, read or used with the configured shapes."""


def data_dir() -> Path:
    """`DATGPT_DATA_DIR`, else `~/.cache/datgpt`: corpora, downloads and prepared shards live here."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "datgpt").expanduser()

