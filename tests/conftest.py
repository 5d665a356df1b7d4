"""Shared fixtures. The corpora the tests read ship in tests/fixtures (see SOURCES.md there): a fresh clone
passes its tests offline, with nothing beside it. FineWeb-style parquet and json files are built from them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.allocator import keep_freed_memory  # noqa: E402 - after the sys.path line

keep_freed_memory()  # what the runner does on CPU: the in-process tests train as fast as the runner

FIXTURES = ROOT / "tests" / "fixtures"
# Every corpus lookup of the tests (in-process and in the runner subprocesses, which inherit the environment)
# reads the fixtures, whatever DATGPT_DATA_DIR the caller has set; tests that need another folder monkeypatch it.
os.environ["DATGPT_DATA_DIR"] = str(FIXTURES)


@pytest.fixture
def data_dir() -> Path:
    """tests/fixtures: the-verdict.txt and the first 998 lines of tinyshakespeare/input.txt."""
    return FIXTURES


def fixture_documents() -> list[tuple[str, list[str]]]:
    """The fixtures as documents: The Verdict's 83 paragraphs, then Tiny Shakespeare's 193 speeches."""
    out = []
    for name in ("the-verdict.txt", "tinyshakespeare/input.txt"):
        text = (FIXTURES / name).read_text(encoding="utf-8")
        out.append((name, [doc for doc in text.split("\n\n") if doc.strip()]))
    return out


@pytest.fixture(scope="session")
def fineweb_parquet(tmp_path_factory) -> list[Path]:
    """Two parquet files in FineWeb's schema (text, id, dump, url, date, file_path, language,
    language_score, token_count): batch_000001 holds The Verdict's paragraphs (83 documents, 5,228 GPT-2
    tokens with one end-of-text each), batch_000002 Tiny Shakespeare's speeches (193 documents)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.data.tokenizer import get_encoding

    enc = get_encoding("gpt2")
    folder = tmp_path_factory.mktemp("fineweb_parquet")
    paths = []
    for i, (name, docs) in enumerate(fixture_documents(), start=1):
        n = len(docs)
        table = pa.table({
            "text": docs,
            "id": [f"<urn:uuid:{i:04d}{j:08d}>" for j in range(n)],
            "dump": ["fixtures"] * n,
            "url": [f"https://example.org/{name}#{j}" for j in range(n)],
            "date": ["2026-01-01T00:00:00Z"] * n,
            "file_path": [name] * n,
            "language": ["en"] * n,
            "language_score": [0.9] * n,
            "token_count": pa.array([len(enc.encode_ordinary(d)) for d in docs], type=pa.int64()),
        })
        paths.append(folder / f"batch_{i:06d}.parquet")
        pq.write_table(table, paths[-1], row_group_size=50)  # several row groups per file
    return paths


@pytest.fixture(scope="session")
def fineweb_json(tmp_path_factory) -> Path:
    """A FineWeb-style JSON array (like a streamed slice written with json.dump): one object per document
    with `id` (stream position), `text`, `language`, `language_score` and `token_count` (GPT-2)."""
    import json

    from training.data.tokenizer import get_encoding

    enc = get_encoding("gpt2")
    docs = [d for _, part in fixture_documents() for d in part]
    rows = [{"id": j, "text": d, "language": "en", "language_score": 0.9,
             "token_count": len(enc.encode_ordinary(d))} for j, d in enumerate(docs)]
    path = tmp_path_factory.mktemp("fineweb_json") / "fineweb_subset.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and it keeps tests robust to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
