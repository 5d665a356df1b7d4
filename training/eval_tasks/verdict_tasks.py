"""Dataset loaders of the local tasks (lm-eval's ``custom_dataset``): the JSONL files beside this file.

lm-eval imports this file by path (``!function verdict_tasks.load_lambada`` in the task YAMLs), so it
imports nothing from datgpt. lm-eval calls the loader with the task's ``metadata`` and
``dataset_kwargs`` as keyword arguments; they do not change what is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str):
    import datasets

    rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_lambada(**_kwargs):
    """``verdict_lambada.jsonl`` as the ``test`` split (fields ``context``, ``target``)."""
    return _load("verdict_lambada.jsonl")


def load_choice(**_kwargs):
    """``verdict_choice.jsonl`` as the ``test`` split (fields ``context``, ``choices``, ``label``)."""
    return _load("verdict_choice.jsonl")


def load_ppl(**_kwargs):
    """``verdict_ppl.jsonl`` as the ``test`` split (field ``text``)."""
    return _load("verdict_ppl.jsonl")
