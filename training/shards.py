"""Token shards: tokenize a corpus once into uint16 files that training memory-maps.

    python -m training.data prepare --hf HuggingFaceFW/fineweb --hf-config sample-10BT --max-tokens 2e9
    python -m training.data prepare corpus/*.parquet --out shards/mine --val-tokens 1e6
    python -m training.data prepare --help

(`python -m training.shards prepare ...` is the same command without importing torch.)

Sources: a Hugging Face dataset streamed through `datasets` (`--hf NAME [--hf-config C] [--split S]
[--data-files F ...]`), or local files and folders: `.txt`/`.md` (one document per file), `.jsonl`/`.ndjson`
(one JSON object per line), `.json` (an array of objects, or one object), `.parquet`; `.gz` works for the
text formats. Folders are searched recursively, files taken in sorted path order. `--text-field` names
the text of a record (default `text`); empty texts are skipped.

A prepared folder (see `docs` in README "Data"):

    OUT/val_000000.bin ...      validation: whole documents from the start of the corpus, until at least
                                `val_tokens` tokens (a document-level split; the same for every run)
    OUT/train_000000.bin ...    training: every later document, until `max_tokens` tokens in all
    OUT/manifest.json           settings, shard list (tokens, sha256), totals, `complete`; written
                                atomically after every shard, so it doubles as the resume record

Shard file: a header of 256 little-endian int32 (magic 20240520, version 1, token count, then zeros;
1,024 bytes), then the tokens as little-endian uint16. Each document is the GPT-2 end-of-text token
(50256) followed by its tokens (`encode_ordinary`: special-token text in documents is plain text).
Every shard holds exactly `shard_tokens` tokens except the last of each split; a document may continue
in the next shard. The training shards in order are one token stream.

Determinism and resume: documents are tokenized in chunks by a process pool and consumed in order, so
the output is a function of the source and the settings only (not of the worker count). Each shard is
written to a temporary file and renamed, then the manifest records the position after it (documents
consumed, tokens of the next document already written). A rerun of the same command with an incomplete
manifest skips that many documents and continues; the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MANIFEST = "manifest.json"
FORMAT_NAME = "datgpt-token-shards"
DEFAULT_VAL_TOKENS = 1_000_000
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_CHUNK_DOCS = 128
DATA_DIR_ENV = "DATGPT_DATA_DIR"
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet",)
EXIT_BAD_INPUT = 2


class DataError(RuntimeError):
    """A corpus that cannot be found, read or used with the configured shapes."""


def data_dir() -> Path:
    """`DATGPT_DATA_DIR`, else `~/.cache/datgpt`: corpora, downloads and prepared shards live here."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "datgpt").expanduser()


# ----------------------------------------------------------------------------- shard files

def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write one shard atomically: a temporary file beside `path`, fsync, then rename."""
    tokens = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_header(path: Path) -> int:
    """Check a shard's header against its size; return its token count. Raises DataError naming the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as err:
        raise DataError(f"{path}: cannot read the shard ({err.strerror or err})") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"{path}: truncated shard: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != MAGIC:
        raise DataError(f"{path}: not a token shard (magic {int(header[0])}, expected {MAGIC})")
    if int(header[1]) != VERSION:
        raise DataError(f"{path}: shard format version {int(header[1])}, this code reads version {VERSION}")
    n = int(header[2])
    expected = HEADER_BYTES + n * TOKEN_DTYPE.itemsize
    if n < 0 or size != expected:
        raise DataError(f"{path}: truncated or corrupt shard: the header says {n} tokens ({expected} bytes), "
                        f"the file has {size} bytes")
    return n


def read_shard(path: Path) -> np.ndarray:
    """A shard's tokens as a read-only uint16 memory map (nothing is loaded into RAM)."""
    n = read_header(path)
    if n == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    mapped = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n,))
    return mapped.view(np.ndarray)  # the same mapping; slicing a plain ndarray view is ~10x cheaper


class ShardedTokens:
    """Several memory-mapped shards seen as one 1-D token stream.

    Windows may cross shard boundaries, as they cross document boundaries: the shards of a split are
    consecutive pieces of one stream. `gather` copies only the requested windows.
    """

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        self.parts = [read_shard(p) for p in self.paths]
        sizes = np.array([p.size for p in self.parts], dtype=np.int64)
        self.ends = np.cumsum(sizes)
        self.begins = self.ends - sizes
        self._n = int(self.ends[-1]) if len(sizes) else 0

    def numel(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as a new int64 array."""
        if not 0 <= start <= stop <= self._n:
            raise IndexError(f"tokens [{start}, {stop}) outside [0, {self._n})")
        out = np.empty(stop - start, dtype=np.int64)
        self._copy_into(out, start)
        return out

    def _copy_into(self, out: np.ndarray, start: int) -> None:
        i = int(np.searchsorted(self.ends, start, side="right"))
        filled = 0
        while filled < out.size:
            part, lo = self.parts[i], start + filled - int(self.begins[i])
            take = min(out.size - filled, part.size - lo)
            out[filled:filled + take] = part[lo:lo + take]
            filled += take
            i += 1

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows of `length` consecutive tokens beginning at each of `starts`: int64 [len(starts), length]."""
        out = np.empty((len(starts), length), dtype=np.int64)
        shard = np.searchsorted(self.ends, starts, side="right")
        for row, (s, i) in enumerate(zip(starts.tolist(), shard.tolist())):
            lo = s - int(self.begins[i])
            if lo + length <= self.parts[i].size:  # the common case: inside one shard
                out[row] = self.parts[i][lo:lo + length]
            else:
                self._copy_into(out[row], s)
        return out


@dataclass
class ShardFolder:
    """A prepared folder, checked: its manifest (if any) and the two token streams."""

    path: Path
    train: ShardedTokens
    val: ShardedTokens
    manifest: dict


def open_folder(path: Path, label: str = "data.shards") -> ShardFolder:
    """Open a prepared folder. With manifest.json (this module's output) the manifest is the truth and must
    say `complete`; without one, `*val*.bin` and `*train*.bin` files in the same header format are used
    in sorted order (e.g. shards written by llm.c's FineWeb script)."""
    if not path.is_dir():
        raise DataError(f"{label}: no such folder {str(path)!r}")
    manifest_path = path / MANIFEST
    if manifest_path.is_file():
        manifest = _read_manifest(manifest_path)
        if not manifest.get("complete"):
            raise DataError(f"{label}: {path} is an unfinished prepare ({len(manifest.get('shards', []))} "
                            f"shards so far); rerun the prepare command to finish it")
        files = {"val": [], "train": []}
        for entry in manifest.get("shards", []):
            shard = path / entry["file"]
            if not shard.is_file():
                raise DataError(f"{label}: {shard} is listed in {manifest_path} but missing")
            if read_header(shard) != entry["tokens"]:
                raise DataError(f"{shard}: holds {read_header(shard)} tokens, {manifest_path} says "
                                f"{entry['tokens']}")
            files[entry["split"]].append(shard)
    else:
        manifest = {}
        bins = sorted(p for p in path.iterdir() if p.suffix == ".bin" and p.is_file())
        files = {"val": [p for p in bins if "val" in p.name], "train": [p for p in bins if "train" in p.name]}
        if not bins:
            raise DataError(f"{label}: {path} holds no {MANIFEST} and no .bin shards; prepare it with "
                            f"`python -m training.data prepare ... --out {path}`")
    for split in ("val", "train"):
        if not files[split]:
            raise DataError(f"{label}: {path} has no {split} shards")
    return ShardFolder(path, ShardedTokens(files["train"]), ShardedTokens(files["val"]), manifest)


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: format version {manifest.get('version')}, this code reads {VERSION}")
    return manifest


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class HFSource:
    """A `datasets` dataset, streamed: a Hub name (HuggingFaceFW/fineweb) or a builder with data_files."""

    name: str
    config: str | None = None
    split: str = "train"
    data_files: tuple[str, ...] | None = None
    label: str = "--hf"  # how errors name it (the CLI flag or the YAML key)

    def describe(self) -> dict:
        files = None
        if self.data_files:
            files = [str(Path(f).expanduser().resolve()) if "://" not in f else f for f in self.data_files]
        return {"kind": "hf", "name": self.name, "config": self.config, "split": self.split, "data_files": files}

    def check(self) -> None:
        if self.data_files:
            for f in self.data_files:
                if "://" not in f and not any(c in f for c in "*?[") and not Path(f).expanduser().exists():
                    raise DataError(f"{self.label}: data file {f!r} does not exist")
        if not _needs_hub(self.name):
            return
        reason = hub_unreachable()
        if reason:
            raise DataError(f"{self.label}: cannot reach the Hugging Face Hub for {self.name!r} ({reason}); "
                            f"streaming needs internet. Offline, prepare local files instead "
                            f"(python -m training.data prepare FILES... --out DIR) and use data.shards")

    def documents(self, text_field: str, skip: int = 0) -> Iterator[str]:
        import datasets

        _quiet_hf_logging()
        files = self.describe()["data_files"]
        try:
            ds = datasets.load_dataset(self.name, self.config, split=self.split, data_files=files, streaming=True)
            if skip:
                ds = ds.skip(skip)
            first = True
            for i, record in enumerate(ds, start=skip):
                if first:
                    if text_field not in record:
                        raise DataError(f"{self.label}: {self.name} has no field {text_field!r} (fields: "
                                        f"{', '.join(map(str, record))}); set the text field")
                    first = False
                yield _text_of(record, text_field, f"{self.label}: {self.name} record {i}")
        except DataError:
            raise
        except Exception as err:  # network, unknown dataset/config/split, ...: one line, no traceback
            first_line = (str(err).strip().splitlines() or [""])[0][:300]
            raise DataError(f"{self.label}: cannot stream {self.name!r} (config {self.config!r}, split "
                            f"{self.split!r}): {type(err).__name__}: {first_line}") from None


@dataclass(frozen=True)
class FileSource:
    """Local files and folders: txt/md, jsonl/ndjson, json, parquet (text formats may be gzipped)."""

    paths: tuple[str, ...]

    def files(self) -> list[Path]:
        out: list[Path] = []
        for given in self.paths:
            path = Path(given).expanduser()
            if path.is_dir():
                found = sorted((p for p in path.rglob("*") if p.is_file() and _kind(p)
                                and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                               key=lambda p: p.relative_to(path).as_posix())
                if not found:
                    raise DataError(f"{given}: no .txt, .md, .jsonl, .ndjson, .json or .parquet files in this folder")
                out.extend(found)
            elif path.is_file():
                if not _kind(path):
                    raise DataError(f"{given}: unsupported file type (use .txt, .md, .jsonl, .ndjson, .json, "
                                    f".parquet, or .gz of the text formats)")
                out.append(path)
            else:
                raise DataError(f"{given}: no such file or folder")
        return [p.resolve() for p in out]

    def describe(self) -> dict:
        return {"kind": "files", "files": [[str(p), p.stat().st_size] for p in self.files()]}

    def check(self) -> None:
        self.files()

    def check_fields(self, text_field: str) -> None:
        """Parquet schemas are checked before anything is written (other formats: at their first record)."""
        for path in self.files():
            if _kind(path) == "parquet":
                names = _parquet_file(path).schema_arrow.names
                if text_field not in names:
                    raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(names)}); "
                                    f"set the text field")

    def documents(self, text_field: str, skip: int = 0) -> Iterator[str]:
        for path in self.files():
            kind = _kind(path)
            if kind == "parquet" and skip:  # skip whole files by their row count, without reading them
                rows = _parquet_file(path).metadata.num_rows
                if rows <= skip:
                    skip -= rows
                    continue
            for text in _file_documents(path, kind, text_field):
                if skip:
                    skip -= 1
                    continue
                yield text


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for kind, suffixes in (("text", TEXT_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("json", JSON_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    if path.name.lower().endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as err:
        raise DataError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None


def _text_of(record, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with a {text_field!r} field, got {type(record).__name__}")
    if text_field not in record:
        raise DataError(f"{where}: no field {text_field!r} (fields: {', '.join(map(str, record))}); "
                        f"set the text field")
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} is {type(text).__name__}, not text")
    return text


def _file_documents(path: Path, kind: str, text_field: str) -> Iterator[str]:
    try:
        if kind == "text":
            with _open_text(path) as f:
                yield f.read()
        elif kind == "jsonl":
            with _open_text(path) as f:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path} line {line_no}: invalid JSON ({err.msg})") from None
                    yield _text_of(record, text_field, f"{path} line {line_no}")
        elif kind == "json":
            with _open_text(path) as f:
                try:
                    payload = json.load(f)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: invalid JSON ({err.msg}, line {err.lineno}); one object per "
                                    f"line needs the .jsonl suffix") from None
            records = payload if isinstance(payload, list) else [payload]
            for i, record in enumerate(records):
                yield _text_of(record, text_field, f"{path} item {i}")
        else:
            pf = _parquet_file(path)
            if text_field not in pf.schema_arrow.names:
                raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                                f"set the text field")
            row = 0
            for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
                for text in batch.column(0).to_pylist():
                    if not isinstance(text, str):
                        raise DataError(f"{path} row {row}: column {text_field!r} is "
                                        f"{type(text).__name__}, not text")
                    row += 1
                    yield text
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None


def _needs_hub(name: str) -> bool:
    """False for `datasets`' packaged builders (parquet, json, ...) and local folders."""
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES as packaged
    except Exception:  # pragma: no cover - private name moved
        packaged = {"arrow", "csv", "json", "pandas", "parquet", "text"}
    return name not in packaged and not Path(name).expanduser().exists()


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """A reason the Hub cannot be reached, or None. Behind a proxy the check is left to `datasets`."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{host}:{port}: {err.strerror or type(err).__name__}"


def _quiet_hf_logging() -> None:
    """No retry warnings or progress bars from datasets / huggingface_hub: errors become one DataError line."""
    with contextlib.suppress(Exception):
        import datasets
        import huggingface_hub

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        huggingface_hub.utils.logging.set_verbosity_error()


# ----------------------------------------------------------------------------- tokenizing

_ENCODER = None


def _init_worker(tokenizer: str, pool_worker: bool = False) -> None:
    global _ENCODER
    from training.tokenizer import get_encoding

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
        _write_json_atomic(self.out / MANIFEST, self.manifest(complete=False))
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
    from training.tokenizer import get_encoding

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
        old = _read_manifest(manifest_path)
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
        _write_json_atomic(manifest_path, writer.manifest(complete=True))
    except _Stop:
        log(f"{out}: stopped after {writer.written} new shards as asked (--max-shards); rerun to continue")
        return writer.manifest(complete=False)
    except DataError:
        _remove_prepare(out, created)
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


def _remove_prepare(out: Path, created: bool) -> None:
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
    if manifest.is_file() and _read_manifest(manifest).get("complete"):
        return folder
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    settings.validate(prefix="data.hf.")
    source.check()  # offline: one error line, and nothing created
    created = not folder.exists()
    with folder_lock(folder, wait=True, log=log):
        if manifest.is_file() and _read_manifest(manifest).get("complete"):
            return folder  # another process finished it while we waited
        log(f"{source.label}: preparing {source.name} into {folder} (first use; later runs reuse it)")
        try:
            prepare(source, folder, settings, workers=os.cpu_count() or 1, progress=progress, log=log)
        except DataError:
            if created:
                _remove_prepare(folder, created=True)
            raise
    return folder


# ----------------------------------------------------------------------------- CLI

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the usage too)
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


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
    parser = _Parser(prog="python -m training.data", description="Corpus tools.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser(
        "prepare", help="tokenize a corpus into uint16 token shards",
        description="Tokenize a corpus once into uint16 token shards (GPT-2 BPE, end-of-text before each "
                    "document): validation shards from the first documents, then training shards. "
                    "Resumable: rerun the same command after an interruption.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="local files or folders: .txt/.md, .jsonl/.ndjson, .json, .parquet (text formats may be .gz)")
    p.add_argument("--hf", metavar="NAME", help="a Hugging Face dataset, streamed (e.g. HuggingFaceFW/fineweb), "
                                                "or a datasets builder (parquet, json, text) with --data-files")
    p.add_argument("--hf-config", metavar="CONFIG", help="dataset configuration (e.g. sample-10BT)")
    p.add_argument("--split", default="train", help="dataset split (default train)")
    p.add_argument("--data-files", nargs="+", metavar="FILE", help="data_files for a datasets builder")
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
    from training.tokenizer import TokenizerError

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
                                   val_tokens=args.val_tokens, shard_tokens=args.shard_tokens)
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
                _remove_prepare(out, created=True)
            raise
        print(out)
        return 0
    except (DataError, TokenizerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
