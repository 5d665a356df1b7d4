"""The token-shard format: uint16 files that training memory-maps, and the folder that holds them.

A prepared folder (written by training/data/prepare.py; see README "Data"):

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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.atomic import atomic_write
from training.data import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MANIFEST = "manifest.json"
FORMAT_NAME = "datgpt-token-shards"


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write one shard atomically: a temporary file beside `path`, fsync, then rename."""
    tokens = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)

    def fill(f):
        f.write(header.tobytes())
        f.write(tokens.tobytes())

    atomic_write(path, fill)


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
        manifest = read_manifest(manifest_path)
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


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: format version {manifest.get('version')}, this code reads {VERSION}")
    return manifest


def write_json_atomic(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=1, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text), text=True)
