"""Prepare: tokenize a corpus once into a folder of token shards (training/data/shards.py).

Determinism and resume: documents are tokenized in chunks by a process pool and consumed in order, so
the output is a function of the source and the settings only (not of the worker count). Each shard is
written to a temporary file and renamed, then the manifest records the position after it (documents
consumed, tokens of the next document already written). A rerun of the same command with an incomplete
manifest skips that many documents and continues; the result is byte-identical to an uninterrupted run.
One writer per folder: `folder_lock`; `ensure_prepared` is the cache of a YAML's `data.hf`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from training.data import DataError, data_dir
from training.data.shards import (FORMAT_NAME, HEADER_BYTES, MAGIC, MANIFEST, TOKEN_DTYPE, VERSION, read_header,
                                  read_manifest, write_json_atomic, write_shard)
from training.data.sources import FileSource, HFSource

DEFAULT_VAL_TOKENS = 1_000_000
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_CHUNK_DOCS = 128


_ENCODER = None


def _init_worker(tokenizer: str, pool_worker: bool = False) -> None:
    global _ENCODER
    from training.data.tokenizer import get_encoding

    if pool_worker:  # Ctrl-C reaches the whole process group: only the main process handles it
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)

    _ENCODER = get_encoding(tokenizer)


def tokenize_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize documents: (EOT + tokens of each non-empty text, concatenated as uint16; per-text lengths,
    0 for an empty text, which is skipped)."""
    enc = _ENCODER
    eot = enc.eot_token
    ids: list[int] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if not text:
            continue
        doc = enc.encode_ordinary(text)  # one thread per worker process: workers = cores used
        ids.append(eot)
        ids.extend(doc)
        lengths[i] = len(doc) + 1
    return np.array(ids, dtype=TOKEN_DTYPE), lengths


def _chunks(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in docs:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _tokenized(docs: Iterator[str], workers: int, chunk_docs: int, tokenizer: str):
    """Yield tokenize_chunk results in input order; at most a few chunks per worker in flight."""
    if workers <= 1:
        _init_worker(tokenizer)
        for chunk in _chunks(docs, chunk_docs):
            yield tokenize_chunk(chunk)
        return
    import multiprocessing

    pool = multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(tokenizer, True))
    try:
        pending: deque = deque()
        for chunk in _chunks(docs, chunk_docs):
            pending.append(pool.apply_async(tokenize_chunk, (chunk,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# ----------------------------------------------------------------------------- prepare

@dataclass
class PrepareSettings:
    """What the prepared tokens depend on (and all that the cache key hashes)."""

    text_field: str = "text"
    max_tokens: int | None = None  # all tokens written (validation + training, end-of-text tokens included)
    val_tokens: int = DEFAULT_VAL_TOKENS  # validation: first documents until at least this many tokens
    shard_tokens: int = DEFAULT_SHARD_TOKENS  # tokens per shard file
    tokenizer: str = "gpt2"

    def validate(self, prefix: str = "--") -> None:
        def name(key: str) -> str:
            return f"{prefix}{key.replace('_', '-')}" if prefix == "--" else f"{prefix}{key}"

        if not self.text_field:
            raise DataError(f"{name('text_field')}: must be a non-empty field name")
        for key in ("val_tokens", "shard_tokens"):
            if getattr(self, key) < 1:
                raise DataError(f"{name(key)}: must be positive, got {getattr(self, key)}")
        if self.max_tokens is not None and self.max_tokens <= self.val_tokens:
            raise DataError(f"{name('max_tokens')}: {self.max_tokens} leaves no training tokens after the "
                            f"{self.val_tokens} validation tokens")


def settings_record(source, settings: PrepareSettings) -> dict:
    return {"source": source.describe(), "text_field": settings.text_field, "max_tokens": settings.max_tokens,
            "val_tokens": settings.val_tokens, "shard_tokens": settings.shard_tokens,
            "tokenizer": settings.tokenizer}


def cache_folder(source, settings: PrepareSettings) -> Path:
    """`$DATGPT_DATA_DIR/shards/<readable name>-<hash of the source and settings>`."""
    record = settings_record(source, settings)
    digest = hashlib.sha256(json.dumps({"v": VERSION, **record}, sort_keys=True).encode()).hexdigest()[:12]
    desc = record["source"]
    if desc["kind"] == "hf":
        words = [desc["name"], desc["config"] or "", desc["split"]]
    else:
        words = [Path(desc["files"][0][0]).stem if desc["files"] else "files"]
    slug = "-".join(w for w in words if w).replace("/", "_")
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)[:80]
    return data_dir() / "shards" / f"{slug}-{digest}"


@dataclass
class _State:
    split: str = "val"  # the split the next document goes to
    docs_done: int = 0  # source records fully consumed (the next record to read)
    carry: int = 0  # tokens of record `docs_done` already written to a shard
    tokens: dict = field(default_factory=lambda: {"val": 0, "train": 0})
    documents: dict = field(default_factory=lambda: {"val": 0, "train": 0})
    empty_documents: int = 0
    shards: list = field(default_factory=list)


class _Stop(Exception):
    """--max-shards reached: the prepare stops resumably."""


class _Writer:
    def __init__(self, out: Path, settings: PrepareSettings, record: dict, state: _State,
                 max_shards: int | None, bar):
        self.out, self.s, self.record, self.state = out, settings, record, state
        self.buf = np.empty(settings.shard_tokens, dtype=TOKEN_DTYPE)
        self.fill = 0
        self.max_shards = max_shards
        self.written = 0
        self.bar = bar

    @property
    def total(self) -> int:
        return self.state.tokens["val"] + self.state.tokens["train"]

    def full(self) -> bool:
        return self.s.max_tokens is not None and self.total >= self.s.max_tokens

    def manifest(self, complete: bool) -> dict:
        st = self.state
        payload = {"format": FORMAT_NAME, "version": VERSION, "magic": MAGIC, "header_bytes": HEADER_BYTES,
                   "dtype": "uint16", "eot_token": _eot(self.s.tokenizer), "settings": self.record,
                   "complete": complete,
                   "position": {"split": st.split, "docs_done": st.docs_done, "carry": st.carry},
                   "totals": {"tokens": dict(st.tokens), "documents": dict(st.documents),
                              "empty_documents_skipped": st.empty_documents, "records_read": st.docs_done},
                   "shards": st.shards}
        return payload

    def flush(self, split: str, docs_done: int, carry: int, final: bool = False) -> None:
        """Write the buffer as the next shard of `split`, then record the position after it."""
        if self.fill:
            index = sum(1 for s in self.state.shards if s["split"] == split)
            name = f"{split}_{index:06d}.bin"
            tokens = self.buf[:self.fill]
            write_shard(self.out / name, tokens)
            self.state.shards.append({"file": name, "split": split, "tokens": int(self.fill),
                                      "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()})
            self.fill = 0
            self.written += 1
        self.state.docs_done, self.state.carry = docs_done, carry
        write_json_atomic(self.out / MANIFEST, self.manifest(complete=False))
        if not final and self.max_shards is not None and self.written >= self.max_shards:
            raise _Stop

    def add(self, index: int, doc: np.ndarray, offset: int) -> None:
        """Append record `index`'s tokens from `offset` on (offset > 0 only when resuming inside it)."""
        st, s = self.state, self.s
        if offset == 0:
            if st.split == "val" and st.tokens["val"] >= s.val_tokens:
                if self.fill:
                    self.flush("val", index, 0)
                st.split = "train"
            st.documents[st.split] += 1
        end = doc.size
        if s.max_tokens is not None:
            end = min(end, offset + s.max_tokens - self.total)
        pos = offset
        while pos < end:
            take = min(end - pos, s.shard_tokens - self.fill)
            self.buf[self.fill:self.fill + take] = doc[pos:pos + take]
            self.fill += take
            pos += take
            st.tokens[st.split] += take
            if self.bar is not None:
                self.bar.update(take)
            if self.fill == s.shard_tokens:
                done = pos == doc.size or self.full()
                self.flush(st.split, index + 1 if done else index, 0 if done else pos)


def _eot(tokenizer: str) -> int:
    from training.data.tokenizer import get_encoding

    return get_encoding(tokenizer).eot_token


def prepare(source, out: Path, settings: PrepareSettings, *, workers: int = 1,
            chunk_docs: int = DEFAULT_CHUNK_DOCS, progress: bool = True, max_shards: int | None = None,
            log=None) -> dict:
    """Tokenize `source` into shards in `out` (created if needed), resuming an unfinished prepare there.

    Returns the final manifest (or the manifest so far, with `complete: false`, when `max_shards` stopped
    it). Raises DataError on bad input; then the files this prepare wrote are removed.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    settings.validate()
    source.check()
    if isinstance(source, FileSource):
        source.check_fields(settings.text_field)
    record = settings_record(source, settings)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out: {out} exists and is not a folder")

    state = _State()
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        old = read_manifest(manifest_path)
        if old.get("settings") != record:
            raise DataError(f"--out: {out} holds a prepare with other settings; use another folder or delete it")
        if old.get("complete"):
            log(f"{out}: already prepared ({old['totals']['tokens']['train']:,} training and "
                f"{old['totals']['tokens']['val']:,} validation tokens)")
            return old
        pos = old["position"]
        state = _State(split=pos["split"], docs_done=pos["docs_done"], carry=pos["carry"],
                       tokens=dict(old["totals"]["tokens"]), documents=dict(old["totals"]["documents"]),
                       empty_documents=old["totals"]["empty_documents_skipped"], shards=list(old["shards"]))
        for entry in state.shards:  # the shards recorded so far must be intact
            if read_header(out / entry["file"]) != entry["tokens"]:
                raise DataError(f"{out / entry['file']}: holds other tokens than {manifest_path} records; "
                                f"delete {out} and prepare again")
        log(f"{out}: resuming after {len(state.shards)} shards ({state.docs_done:,} documents)")
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise DataError(f"--out: {out} is not empty and holds no {MANIFEST}; use a new or empty folder")

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp-*"):  # temp files of a killed run
        stale.unlink()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.max_tokens, initial=sum(state.tokens.values()), unit="tok", unit_scale=True,
                   dynamic_ncols=True, desc="prepare", file=sys.stderr)
    writer = _Writer(out, settings, record, state, max_shards, bar)
    start = time.perf_counter()
    new_tokens = -sum(state.tokens.values())
    try:
        index = state.docs_done
        if not writer.full():
            docs = source.documents(settings.text_field, skip=state.docs_done)
            results = _tokenized(docs, workers, chunk_docs, settings.tokenizer)
            with contextlib.closing(docs), contextlib.closing(results):
                index = _consume(writer, results, state.docs_done, state.carry)
        if state.tokens["train"] == 0:
            n = sum(state.tokens.values())
            if n == 0:
                raise DataError(f"{_source_name(source)}: no documents with text")
            hint = "lower the validation tokens or add data"
            if sum(state.documents.values()) == 1:
                hint = ("the split is by whole documents and this corpus is one document; for a single text "
                        "file use data.path with data.val_fraction instead")
            raise DataError(f"{_source_name(source)}: {n:,} tokens in all; nothing is left for training after the "
                            f"{settings.val_tokens:,} validation tokens ({hint})")
        writer.flush(state.split, index, 0, final=True)
        state.split = "train"
        write_json_atomic(manifest_path, writer.manifest(complete=True))
    except _Stop:
        log(f"{out}: stopped after {writer.written} new shards as asked (--max-shards); rerun to continue")
        return writer.manifest(complete=False)
    except DataError:
        remove_prepare(out, created)
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    new_tokens += sum(state.tokens.values())
    log(f"{out}: {state.tokens['train']:,} training tokens in {sum(s['split'] == 'train' for s in state.shards)} "
        f"shards, {state.tokens['val']:,} validation tokens in {sum(s['split'] == 'val' for s in state.shards)}, "
        f"from {sum(state.documents.values()):,} documents; {new_tokens / max(seconds, 1e-9):,.0f} tokens/s")
    return writer.manifest(complete=True)


def _consume(writer: _Writer, results, index: int, offset: int) -> int:
    """Feed tokenized chunks to the writer in order; return the index of the next unread record."""
    for tokens, lengths in results:
        pos = 0
        for length in lengths.tolist():
            if length == 0:
                if offset == 0:
                    writer.state.empty_documents += 1
            else:
                writer.add(index, tokens[pos:pos + length], offset)
                pos += length
            index, offset = index + 1, 0
            if writer.full():
                return index
    return index


def _source_name(source) -> str:
    if isinstance(source, HFSource):
        return f"{source.label} {source.name}"
    return ", ".join(source.paths)


def remove_prepare(out: Path, created: bool) -> None:
    """Remove what prepares wrote in `out` (shards, manifest, temp files); the folder too if we made it."""
    for path in list(out.glob("train_*.bin")) + list(out.glob("val_*.bin")) + list(out.glob(".*.tmp-*")):
        path.unlink(missing_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    if created:
        (out / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out.rmdir()


@contextlib.contextmanager
def folder_lock(folder: Path, wait: bool, log=None):
    """An exclusive lock on `folder/.lock` (no-op where fcntl is missing) so two processes never write
    the same folder: DDP ranks preparing on first use wait for the first one."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise DataError(f"--out: another prepare is writing {folder}") from None
            if log:
                log(f"{folder}: waiting for another process preparing it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_prepared(source: HFSource, settings: PrepareSettings, progress: bool = True) -> Path:
    """The cache folder of these settings, prepared now if it is not complete yet."""
    folder = cache_folder(source, settings)
    manifest = folder / MANIFEST
    if manifest.is_file() and read_manifest(manifest).get("complete"):
        return folder
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    settings.validate(prefix="data.hf.")
    source.check()  # offline: one error line, and nothing created
    created = not folder.exists()
    with folder_lock(folder, wait=True, log=log):
        if manifest.is_file() and read_manifest(manifest).get("complete"):
            return folder  # another process finished it while we waited
        log(f"{source.label}: preparing {source.name} into {folder} (first use; later runs reuse it)")
        try:
            prepare(source, folder, settings, workers=os.cpu_count() or 1, progress=progress, log=log)
        except DataError:
            if created:
                remove_prepare(folder, created=True)
            raise
    return folder
