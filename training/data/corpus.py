"""Corpora, the fixed train/validation split, and deterministic batches shared by both arms.

A corpus is found in this order: `data.path` in the YAML (any file, used as it is); the folder named by
`DATGPT_DATA_DIR` (default `~/.cache/datgpt`, which is also the download cache), where a built-in corpus must
match its SHA-256; a download from the corpus's public source, verified by its SHA-256 and cached there; else
a `DataError` saying where to put the file.

Larger corpora are tokenized once into uint16 token shards (`python -m training.data prepare ...`,
training/data/prepare.py) and memory-mapped: `data.shards` names a prepared folder, `data.hf` a Hugging Face
dataset that is prepared into a cache folder on first use.

Batches are a pure function of (seed, step, micro-batch index): both arms of a seed see the same
windows in the same order, any world size sees the same global batch, and a resumed run needs no
loader state beyond the step (the step is the data position).
"""

from __future__ import annotations

import hashlib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from training.atomic import atomic_write
from training.config import DataConfig, local_accum_steps
from training.data import DATA_DIR_ENV, DataError, data_dir
from training.data.shards import ShardedTokens
from training.data.tokenizer import encode


@dataclass(frozen=True)
class BuiltinCorpus:
    filename: str  # path inside DATGPT_DATA_DIR
    url: str  # public source, pinned to a commit so the checksum stays valid
    sha256: str


BUILTIN_CORPORA = {
    "verdict": BuiltinCorpus(
        "the-verdict.txt",
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/"
        "28c65cdfbc3338e2e040016eea4b7fdf556e4d57/ch02/01_main-chapter-code/the-verdict.txt",
        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"),
    "tinyshakespeare": BuiltinCorpus(
        "tinyshakespeare/input.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/"
        "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
}


def download(corpus: BuiltinCorpus, dest: Path, timeout: float = 30.0) -> None:
    """Download to a temp file beside `dest`, check the SHA-256, then rename into place."""

    def fetch(out) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(corpus.url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
        got = digest.hexdigest()
        if got != corpus.sha256:
            raise DataError(f"{corpus.url}: checksum mismatch (SHA-256 {got}, expected {corpus.sha256}); "
                            f"not using the download")

    atomic_write(dest, fetch)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_local_copy(name: str, corpus: BuiltinCorpus, path: Path) -> None:
    """A built-in corpus found in the data folder must be the published file, byte for byte: a changed copy
    (CRLF line ends, an edit) would change every token count and loss without a word."""
    try:
        got = file_sha256(path)
    except OSError as err:
        raise DataError(f"data.dataset: cannot read {path} ({err.strerror or err})") from None
    if got != corpus.sha256:
        raise DataError(
            f"data.dataset: {path} is not the {name!r} corpus (SHA-256 {got}, expected {corpus.sha256}); "
            f"restore the original file, or set data.path to train on this copy on purpose")


def resolve_corpus(cfg: DataConfig) -> Path:
    """The local file holding the configured corpus: `data.path` as it is, or a built-in corpus from the data
    folder (checked against its SHA-256) or downloaded into it."""
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise DataError(f"data.path: no such file {cfg.path!r}")
        return path
    corpus = BUILTIN_CORPORA[cfg.dataset]
    path = data_dir() / corpus.filename
    if path.is_file():
        check_local_copy(cfg.dataset, corpus, path)
        return path
    try:
        download(corpus, path)
    except DataError:
        raise
    except Exception as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(
            f"data.dataset: {cfg.dataset!r} is not in {data_dir()} and its download failed ({reason}). "
            f"Put the file at {path} (set {DATA_DIR_ENV} to use another folder) or point data.path "
            f"at a local copy") from None
    return path


Tokens = torch.Tensor | ShardedTokens  # a 1-D token stream: int64 in memory, or memory-mapped shards


@dataclass
class Splits:
    """Token ids of one corpus, split once. A text corpus (`data.dataset`/`data.path`) is tokenized in memory
    and its last `val_fraction` is validation; prepared shards (`data.shards`/`data.hf`) are memory-mapped,
    validation being the folder's val shards. Both kinds have `.numel()`."""

    train: Tokens
    val: Tokens
    source: Path

    @property
    def n_tokens(self) -> int:
        return self.train.numel() + self.val.numel()


def load_splits(cfg: DataConfig, tokenizer: str, context_length: int) -> Splits:
    """Load the configured corpus and split it, checking it holds at least one window of each split."""
    if cfg.shards is not None or cfg.hf is not None:
        return _load_shards(cfg, tokenizer, context_length)
    path = resolve_corpus(cfg)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as UTF-8 text ({err})") from None
    tokens = torch.tensor(encode(text, tokenizer), dtype=torch.long)
    n_val = max(int(round(tokens.numel() * cfg.val_fraction)), 0)
    window = context_length + 1
    if n_val < window:
        raise DataError(
            f"data.val_fraction: {cfg.val_fraction} of {path.name}'s {tokens.numel()} tokens is {n_val} "
            f"validation tokens, fewer than one window of context_length+1={window}; raise "
            f"data.val_fraction or lower model.context_length")
    if tokens.numel() - n_val < window:
        raise DataError(
            f"model.context_length: {context_length} is longer than the {tokens.numel() - n_val} training "
            f"tokens of {path.name}; lower it or use a larger corpus")
    return Splits(train=tokens[: tokens.numel() - n_val], val=tokens[tokens.numel() - n_val:], source=path)


def _load_shards(cfg: DataConfig, tokenizer: str, context_length: int) -> Splits:
    from training.data import prepare, shards

    if cfg.shards is not None:
        label, folder = "data.shards", Path(cfg.shards).expanduser()
    else:
        label = "data.hf"
        folder = prepare.ensure_prepared(*hf_source(cfg, tokenizer))
    opened = shards.open_folder(folder, label)
    made_with = opened.manifest.get("settings", {}).get("tokenizer", "gpt2")
    if made_with != tokenizer:
        raise DataError(f"{label}: {folder} was tokenized with {made_with!r}, the experiment uses tokenizer "
                        f"{tokenizer!r}; prepare it again with --tokenizer {tokenizer} or set tokenizer: {made_with}")
    window = context_length + 1
    for split, tokens in (("training", opened.train), ("validation", opened.val)):
        if tokens.numel() < window:
            raise DataError(f"{label}: {folder} holds {tokens.numel()} {split} tokens, fewer than one window of "
                            f"context_length+1={window}; lower model.context_length or prepare more tokens")
    return Splits(train=opened.train, val=opened.val, source=folder)


def hf_source(cfg: DataConfig, tokenizer: str):
    """(HFSource, PrepareSettings) of a `data.hf` section tokenized with `tokenizer`: what the cache folder
    is keyed by."""
    from training.data.prepare import PrepareSettings
    from training.data.sources import HFSource

    hf = cfg.hf
    source = HFSource(hf.name, hf.config, hf.split, tuple(hf.data_files) if hf.data_files else None,
                      label="data.hf")
    settings = PrepareSettings(text_field=hf.text_field, max_tokens=hf.max_tokens, val_tokens=hf.val_tokens,
                               shard_tokens=hf.shard_tokens, tokenizer=tokenizer)
    return source, settings


class TrainBatches:
    """Random windows of the training tokens, a pure function of (seed, step, micro-batch index).

    Each optimizer step draws `micro_batch_size * grad_accum_steps` window offsets from a generator
    seeded by (seed, step); global micro-batch `i` takes rows [i*B, (i+1)*B). A process of rank r in a
    world of W takes global micro-batches r*(A/W) ... (r+1)*(A/W)-1 (`rank_micro_batches`): the ranks'
    micro-batches are disjoint and together are the global batch, which is the same for every world size.
    There is no loader state: the optimizer step is the data position, so a resumed run continues the
    same order from its step alone. Windows are drawn with replacement, so a window can repeat.

    `tokens` is an int64 tensor or memory-mapped shards (`ShardedTokens`); from shards only the drawn
    windows are read, and windows may cross shard boundaries.
    """

    def __init__(self, tokens: Tokens, context_length: int, micro_batch_size: int,
                 grad_accum_steps: int, seed: int):
        self.tokens = tokens
        self.T = context_length
        self.B = micro_batch_size
        self.A = grad_accum_steps
        self.seed = seed
        self._offsets_step = -1
        self._offsets = torch.empty(0, dtype=torch.long)
        self._window = torch.arange(self.T + 1)

    def _step_offsets(self, step: int) -> torch.Tensor:
        if step != self._offsets_step:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            high = self.tokens.numel() - self.T  # last valid start so that T+1 tokens fit
            self._offsets = torch.randint(0, high, (self.A * self.B,), generator=gen)
            self._offsets_step = step
        return self._offsets

    def get(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = self._step_offsets(step)[micro * self.B:(micro + 1) * self.B]
        if isinstance(self.tokens, torch.Tensor):
            rows = self.tokens[offsets[:, None] + self._window]
        else:
            rows = torch.from_numpy(self.tokens.gather(offsets.numpy(), self.T + 1))
        return rows[:, :-1], rows[:, 1:]


def rank_micro_batches(rank: int, world_size: int, grad_accum_steps: int) -> range:
    """The global micro-batch indices that process `rank` of `world_size` runs each step (as the trainer
    does): consecutive blocks of A/W, disjoint across ranks and covering 0..A-1."""
    local = local_accum_steps(grad_accum_steps, world_size)  # a ConfigError (a ValueError) when uneven
    return range(rank * local, (rank + 1) * local)


def val_windows(val: Tokens, context_length: int, eval_tokens: int,
                placement: str = "first") -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation set: non-overlapping windows of `context_length` targets, at most `eval_tokens`
    targets in all (at least one window), the same for every arm and every evaluation.

    `placement` "first": consecutive windows from the start of the validation split (its first documents);
    "spread": the same number of windows at evenly spaced offsets from the first token to the last, so they
    sample the whole split (the first starts at 0, the last ends at its last token)."""
    T = context_length
    n = min((val.numel() - 1) // T, max(1, -(-eval_tokens // T)))
    if placement == "first":
        rows = val[: n * T + 1] if isinstance(val, torch.Tensor) else torch.from_numpy(val.read(0, n * T + 1))
        return rows[:-1].view(n, T), rows[1:].view(n, T)
    last = val.numel() - (T + 1)  # the last start at which a window and its shifted targets fit
    starts = torch.arange(n, dtype=torch.long) * last // max(n - 1, 1)  # spaced >= T apart since n*T <= numel-1
    if isinstance(val, torch.Tensor):
        rows = val[starts[:, None] + torch.arange(T + 1)]
    else:
        rows = torch.from_numpy(val.gather(starts.numpy(), T + 1))
    return rows[:, :-1], rows[:, 1:]
