"""`python -m training.data prepare ...`: the shard tool (imports no torch).

    python -m training.data prepare --hf HuggingFaceFW/fineweb --hf-config sample-10BT --max-tokens 2e9
    python -m training.data prepare corpus/*.parquet --out shards/mine --val-tokens 1e6
    python -m training.data prepare --help
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


from training.cli import EXIT_BAD_INPUT, OneLineParser
from training.data import DataError
from training.data.prepare import (DEFAULT_CHUNK_DOCS, DEFAULT_SHARD_TOKENS, DEFAULT_VAL_TOKENS, PrepareSettings,
                                   cache_folder, folder_lock, prepare, remove_prepare)
from training.data.sources import FileSource, HFSource
from training.data.tokenizer import N_VOCAB

def _count(text: str) -> int:
    """1000000, 1_000_000, 1e6 -> 1000000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")) or value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m training.data", description="Corpus tools.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser(
        "prepare", help="tokenize a corpus into uint16 token shards",
        description="Tokenize a corpus once into uint16 token shards (GPT-2 BPE or UTF-8 bytes, the "
                    "tokenizer's end-of-text id before each document): validation shards from the first documents, then training shards. "
                    "Resumable: rerun the same command after an interruption.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="local files or folders: .txt/.md, .jsonl/.ndjson, .json, .parquet (text formats may be .gz)")
    p.add_argument("--hf", metavar="NAME", help="a Hugging Face dataset, streamed (e.g. HuggingFaceFW/fineweb), "
                                                "or a datasets builder (parquet, json, text) with --data-files")
    p.add_argument("--hf-config", metavar="CONFIG", help="dataset configuration (e.g. sample-10BT)")
    p.add_argument("--split", default="train", help="dataset split (default train)")
    p.add_argument("--data-files", nargs="+", metavar="FILE", help="data_files for a datasets builder")
    p.add_argument("--tokenizer", choices=tuple(N_VOCAB), default="gpt2",
                   help="gpt2 (tiktoken's BPE, default) or bytes (UTF-8 bytes, id 256 before each document); "
                        "recorded in the folder's manifest, and a YAML's `tokenizer` must match it")
    p.add_argument("--text-field", default="text", help="the field holding each document's text (default text)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the cache folder that a YAML data.hf "
                                                "with the same settings uses, under $DATGPT_DATA_DIR/shards)")
    p.add_argument("--max-tokens", type=_count, help="stop after this many tokens in all (validation included)")
    p.add_argument("--val-tokens", type=_count, default=DEFAULT_VAL_TOKENS,
                   help=f"validation: whole documents from the start until at least this many tokens "
                        f"(default {DEFAULT_VAL_TOKENS:,})")
    p.add_argument("--shard-tokens", type=_count, default=DEFAULT_SHARD_TOKENS,
                   help=f"tokens per shard file (default {DEFAULT_SHARD_TOKENS:,}, 200 MB)")
    p.add_argument("--workers", type=_count, default=os.cpu_count() or 1,
                   help="tokenizer processes (default: all cores); the output does not depend on it")
    p.add_argument("--chunk-docs", type=_count, default=DEFAULT_CHUNK_DOCS,
                   help=f"documents per task sent to a worker (default {DEFAULT_CHUNK_DOCS})")
    p.add_argument("--max-shards", type=_count,
                   help="write at most this many new shards, then stop (rerun to continue)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    from training.data.tokenizer import TokenizerError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad argument (2, one line already printed)
        return stop.code if isinstance(stop.code, int) else EXIT_BAD_INPUT
    try:
        if bool(args.paths) == bool(args.hf):
            raise DataError("prepare: give local PATHs or --hf NAME (exactly one kind of source)")
        if args.paths and (args.hf_config or args.data_files):
            raise DataError("--hf-config/--data-files: only with --hf")
        if args.hf:
            source = HFSource(args.hf, args.hf_config, args.split,
                              tuple(args.data_files) if args.data_files else None, label="--hf")
        else:
            source = FileSource(tuple(args.paths))
        settings = PrepareSettings(text_field=args.text_field, max_tokens=args.max_tokens,
                                   val_tokens=args.val_tokens, shard_tokens=args.shard_tokens,
                                   tokenizer=args.tokenizer)
        settings.validate()
        source.check()
        out = Path(args.out).expanduser() if args.out else cache_folder(source, settings)
        if out.exists() and not out.is_dir():
            raise DataError(f"--out: {out} exists and is not a folder")
        created = not out.exists()
        try:
            with folder_lock(out, wait=False):
                prepare(source, out, settings, workers=args.workers, chunk_docs=args.chunk_docs,
                        progress=not args.no_progress, max_shards=args.max_shards)
        except DataError:
            if created:
                remove_prepare(out, created=True)
            raise
        print(out)
        return 0
    except (DataError, TokenizerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130
