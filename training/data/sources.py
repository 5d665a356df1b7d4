"""Where documents come from: a Hugging Face dataset streamed through `datasets` (`--hf NAME [--hf-config C]
[--split S] [--data-files F ...]`), or local files and folders: `.txt`/`.md` (one document per file),
`.jsonl`/`.ndjson` (one JSON object per line), `.json` (an array of objects, or one object), `.parquet`;
`.gz` works for the text formats. Folders are searched recursively, files taken in sorted path order.
`--text-field` names the text of a record (default `text`); empty texts are skipped.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse


from training.data import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet",)


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
