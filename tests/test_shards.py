"""Token shards: format, prepare (counts, determinism, resume, errors), memory-mapped loading, batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from training.config import DataConfig, HFDataConfig
from training.data import DataError, cli, sources
from training.data import prepare as prepare_mod
from training.data.corpus import TrainBatches, load_splits, rank_micro_batches, val_windows
from training.data.prepare import PrepareSettings, prepare
from training.data.shards import HEADER_BYTES, MAGIC, ShardedTokens, open_folder, read_header, read_shard, write_shard
from training.data.sources import FileSource
from training.data.tokenizer import EOT_TOKEN, get_encoding
from training.experiment import build_experiment
from training.typed_yaml import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# The corpora are the test fixtures as FineWeb-style files (conftest.py: `fineweb_parquet`, `fineweb_json`):
# 83 + 193 documents, 5,064 + 7,750 GPT-2 tokens with one end-of-text per document. Settings are scaled to them.
VAL_TOKENS = 2_000
SHARD_TOKENS = 2_000


def expected_stream(texts: list[str]) -> np.ndarray:
    enc = get_encoding("gpt2")
    out: list[int] = []
    for text in texts:
        if text:
            out.append(EOT_TOKEN)
            out.extend(enc.encode_ordinary(text))
    return np.array(out, dtype=np.int64)


def run_prepare(paths, out: Path, **kw) -> dict:
    settings = PrepareSettings(text_field=kw.pop("text_field", "text"), max_tokens=kw.pop("max_tokens", None),
                               val_tokens=kw.pop("val_tokens", VAL_TOKENS),
                               shard_tokens=kw.pop("shard_tokens", SHARD_TOKENS))
    return prepare(FileSource(tuple(str(p) for p in paths)), out, settings, progress=False,
                   log=lambda msg: None, **kw)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def stream_of(folder: Path, split: str) -> np.ndarray:
    manifest = json.loads((folder / "manifest.json").read_text())
    parts = [np.asarray(read_shard(folder / s["file"]), dtype=np.int64)
             for s in manifest["shards"] if s["split"] == split]
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def two_files_prepared(tmp_path_factory, fineweb_parquet):
    """The two FineWeb-style parquet files prepared once (1 worker), shared by several tests."""
    out = tmp_path_factory.mktemp("prepared") / "shards"
    run_prepare(fineweb_parquet, out, workers=1, chunk_docs=16)
    return out


# ----------------------------------------------------------------------------- format

def test_shard_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=12_345).astype(np.uint16)
    path = tmp_path / "x.bin"
    write_shard(path, tokens)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header.size == 256 and header[0] == MAGIC == 20240520 and header[1] == 1 and header[2] == 12_345
    assert not header[3:].any()
    assert len(raw) == HEADER_BYTES + 2 * 12_345
    assert np.array_equal(np.frombuffer(raw[HEADER_BYTES:], dtype="<u2"), tokens)
    mapped = read_shard(path)
    assert isinstance(mapped.base, np.memmap) and not mapped.flags.writeable  # mapped, not loaded
    assert np.array_equal(mapped, tokens)
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]  # no temp file left


def test_sharded_tokens_cross_shard_boundaries(tmp_path):
    stream = np.arange(1000, dtype=np.uint16)
    cuts = [0, 7, 300, 301, 650, 1000]  # includes a 1-token shard: a window may span 3 shards
    paths = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        paths.append(tmp_path / f"train_{i:06d}.bin")
        write_shard(paths[-1], stream[a:b])
    tokens = ShardedTokens(paths)
    assert tokens.numel() == 1000
    starts = np.array([0, 5, 295, 299, 640, 989])
    rows = tokens.gather(starts, 11)
    assert rows.dtype == np.int64 and np.array_equal(rows, starts[:, None] + np.arange(11))
    assert np.array_equal(tokens.read(290, 660), np.arange(290, 660))


# ----------------------------------------------------------------------------- prepare: counts

def test_parquet_counts_equal_tiktoken(two_files_prepared, fineweb_parquet):
    folder = two_files_prepared
    texts = [t for f in fineweb_parquet for t in pq.read_table(f, columns=["text"]).column(0).to_pylist()]
    assert len(texts) == 276
    expected = expected_stream(texts)
    val, train = stream_of(folder, "val"), stream_of(folder, "train")
    assert np.array_equal(np.concatenate([val, train]), expected)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"]["tokens"] == {"val": val.size, "train": train.size}
    assert sum(manifest["totals"]["documents"].values()) == 276
    assert val.size + train.size == 5_064 + 7_750
    assert (val == EOT_TOKEN).sum() == manifest["totals"]["documents"]["val"]
    # document-level split: whole documents, the last one crossing 2,000 tokens
    assert val[0] == EOT_TOKEN and train[0] == EOT_TOKEN and val.size >= VAL_TOKENS
    last_doc = val.size - np.flatnonzero(val == EOT_TOKEN)[-1]
    assert val.size - last_doc < VAL_TOKENS
    # every shard full except the last of each split; header counts equal the manifest's
    for entry in manifest["shards"]:
        assert read_header(folder / entry["file"]) == entry["tokens"]
    train_sizes = [s["tokens"] for s in manifest["shards"] if s["split"] == "train"]
    assert len(train_sizes) >= 5  # enough shards for the resume tests below
    assert all(n == SHARD_TOKENS for n in train_sizes[:-1]) and 0 < train_sizes[-1] <= SHARD_TOKENS


def test_fineweb_json_array_and_its_token_count_field(tmp_path, fineweb_json):
    docs = json.loads(fineweb_json.read_text(encoding="utf-8"))
    assert len(docs) == 276 and docs[0]["text"].startswith("I HAD always thought")
    manifest = run_prepare([fineweb_json], tmp_path / "out", workers=1, val_tokens=1_000)
    folder = tmp_path / "out"
    # the array's documents in order, `text` only, each after one end-of-text; the other fields are ignored
    stream = np.concatenate([stream_of(folder, "val"), stream_of(folder, "train")])
    assert np.array_equal(stream, expected_stream([d["text"] for d in docs]))
    # FineWeb's `token_count` field (GPT-2, as here) adds up to the tokens prepared, less the end-of-texts
    total = sum(manifest["totals"]["tokens"].values())
    assert total == sum(d["token_count"] for d in docs) + 276 == 12_814
    assert sum(manifest["totals"]["documents"].values()) == 276


def test_max_tokens_truncates_exactly(tmp_path, fineweb_parquet):
    manifest = run_prepare(fineweb_parquet[:1], tmp_path / "out", workers=1, max_tokens=4_001, shard_tokens=1_500)
    folder = tmp_path / "out"
    stream = np.concatenate([stream_of(folder, "val"), stream_of(folder, "train")])
    assert stream.size == 4_001 == sum(manifest["totals"]["tokens"].values())
    full = expected_stream(pq.read_table(fineweb_parquet[0], columns=["text"]).column(0).to_pylist())
    assert full.size == 5_064 and np.array_equal(stream, full[:4_001])


# ----------------------------------------------------------------------------- determinism and resume

def test_deterministic_and_independent_of_workers(tmp_path, fineweb_parquet, two_files_prepared):
    out = tmp_path / "two_workers"
    run_prepare(fineweb_parquet, out, workers=2, chunk_docs=7)
    assert folder_bytes(out) == folder_bytes(two_files_prepared)  # 1 worker, chunks of 16, other folder


def test_resume_after_max_shards_is_byte_identical(tmp_path, fineweb_parquet, two_files_prepared):
    out = tmp_path / "resumed"
    partial = run_prepare(fineweb_parquet, out, workers=1, max_shards=3)  # 2 validation shards, 1 training
    assert not partial["complete"] and len(partial["shards"]) == 3
    assert partial["position"]["carry"] > 0  # stopped inside a document: it continues in the next shard
    with pytest.raises(DataError, match="unfinished prepare"):
        open_folder(out)
    run_prepare(fineweb_parquet, out, workers=1, max_shards=4)
    final = run_prepare(fineweb_parquet, out, workers=2)
    assert final["complete"]
    assert folder_bytes(out) == folder_bytes(two_files_prepared)


def test_resume_after_a_crash_mid_prepare(tmp_path, fineweb_parquet, two_files_prepared, monkeypatch):
    out = tmp_path / "crashed"
    real_write = prepare_mod.write_shard
    calls = []

    def crash_on_fifth(path, tokens):
        calls.append(path)
        if len(calls) == 5:  # killed while writing the 5th shard: its temp file is left behind
            (path.parent / f".{path.name}.tmp-12345").write_bytes(b"partial")
            raise KeyboardInterrupt
        real_write(path, tokens)

    monkeypatch.setattr(prepare_mod, "write_shard", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(fineweb_parquet, out, workers=1)
    monkeypatch.setattr(prepare_mod, "write_shard", real_write)
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 4
    run_prepare(fineweb_parquet, out, workers=1)
    assert folder_bytes(out) == folder_bytes(two_files_prepared)
    assert not list(out.glob(".*.tmp-*"))


def test_cli_resumes_and_refuses_other_settings(tmp_path, fineweb_parquet, two_files_prepared, capsys):
    files = [str(f) for f in fineweb_parquet]
    out = tmp_path / "cli"
    args = ["prepare", *files, "--out", str(out), "--val-tokens", "2e3", "--shard-tokens", "2_000",
            "--workers", "1", "--no-progress"]
    assert cli.main(args + ["--max-shards", "1"]) == 0
    assert cli.main(args) == 0
    assert folder_bytes(out) == folder_bytes(two_files_prepared)
    assert cli.main(args) == 0 and "already prepared" in capsys.readouterr().err
    assert cli.main(args[:-5] + ["--shard-tokens", "3000", "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a prepare with other settings" in err


# ----------------------------------------------------------------------------- ranks and batches

def test_rank_micro_batches_are_disjoint_and_cover_the_global_batch(two_files_prepared):
    train = open_folder(two_files_prepared).train
    B, A, T = 2, 8, 32
    batches = TrainBatches(train, T, B, A, seed=3)
    whole = TrainBatches(train, T, B * A, 1, seed=3)
    for world in (1, 2, 4, 8):
        owned = [list(rank_micro_batches(r, world, A)) for r in range(world)]
        flat = [m for mine in owned for m in mine]
        assert sorted(flat) == list(range(A)) and len(set(flat)) == A  # disjoint and covering
        for step in (0, 5):
            rows = torch.cat([batches.get(step, m)[0] for mine in owned for m in mine])
            assert torch.equal(rows, whole.get(step, 0)[0])  # the same global batch at every world size
    with pytest.raises(ValueError):
        rank_micro_batches(0, 3, A)


def test_end_to_end_load_splits_on_prepared_shards(two_files_prepared):
    splits = load_splits(DataConfig(shards=str(two_files_prepared)), "gpt2", 64)
    assert isinstance(splits.train, ShardedTokens) and splits.source == two_files_prepared
    stream = stream_of(two_files_prepared, "train")
    assert splits.train.numel() == stream.size and splits.n_tokens == stream.size + splits.val.numel()
    batches = TrainBatches(splits.train, 64, micro_batch_size=8, grad_accum_steps=2, seed=0)
    x, y = batches.get(7, 1)
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    offsets = batches._step_offsets(7)[8:16].numpy()
    assert np.array_equal(x.numpy(), stream[offsets[:, None] + np.arange(64)])  # the memmapped tokens
    assert torch.equal(x, TrainBatches(splits.train, 64, 8, 2, seed=0).get(7, 1)[0])  # pure function
    vx, vy = val_windows(splits.val, 64, eval_tokens=1000)
    val = stream_of(two_files_prepared, "val")
    assert vx.shape == (16, 64) and np.array_equal(vx.flatten().numpy(), val[:1024])
    assert torch.equal(vx[:, 1:], vy[:, :-1])


def test_yaml_hf_kind_prepares_into_the_cache_once(tmp_path, fineweb_parquet, monkeypatch, two_files_prepared):
    monkeypatch.setenv("DATGPT_DATA_DIR", str(tmp_path / "cache"))
    files = [str(f) for f in fineweb_parquet]
    raw = {"name": "x", "data": {"hf": {"name": "parquet", "data_files": files, "val_tokens": VAL_TOKENS,
                                        "shard_tokens": SHARD_TOKENS}},
           "model": {"n_layers": 1, "n_heads": 1, "n_embd": 8, "context_length": 16},
           "train": {"tokens": 1024}, "arms": {"gpt": {"model": {"kind": "gpt"}}}}
    cfg = build_experiment(raw)
    assert cfg.data.hf == HFDataConfig(name="parquet", data_files=files, val_tokens=VAL_TOKENS,
                                       shard_tokens=SHARD_TOKENS)
    assert cfg.to_dict()["data"]["hf"]["data_files"] == files
    splits = load_splits(cfg.data, "gpt2", 16)
    folder = splits.source
    assert folder.parent == tmp_path / "cache" / "shards" and folder.name.startswith("parquet-train-")
    # through `datasets` the tokens are the same as from the local-file reader
    for name, blob in folder_bytes(folder).items():
        if name.endswith(".bin"):
            assert blob == (two_files_prepared / name).read_bytes(), name
    monkeypatch.setattr(prepare_mod, "prepare", lambda *a, **k: pytest.fail("prepared twice"))
    assert load_splits(cfg.data, "gpt2", 16).source == folder  # the second use reads the cache
    other = build_experiment({**raw, "data": {"hf": {**raw["data"]["hf"], "val_tokens": 3_000}}})
    assert prepare_mod.cache_folder(*_hf(other)) != folder  # other settings, other cache folder


def _hf(cfg):
    from training.data.corpus import hf_source

    return hf_source(cfg.data, cfg.tokenizer)


# ----------------------------------------------------------------------------- errors

def test_corrupt_and_truncated_shards_are_named(tmp_path, two_files_prepared):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name, blob in folder_bytes(two_files_prepared).items():
        (folder / name).write_bytes(blob)
    bad = bytearray((folder / "train_000001.bin").read_bytes())
    bad[:4] = np.int32(12345).tobytes()
    (folder / "train_000001.bin").write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"train_000001.bin: not a token shard \(magic 12345"):
        load_splits(DataConfig(shards=str(folder)), "gpt2", 64)
    (folder / "train_000001.bin").write_bytes((two_files_prepared / "train_000001.bin").read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train_000001.bin: truncated or corrupt shard: the header says 2000"):
        load_splits(DataConfig(shards=str(folder)), "gpt2", 64)
    (folder / "val_000000.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="val_000000.bin: truncated shard: 100 bytes"):
        read_header(folder / "val_000000.bin")
    with pytest.raises(DataError, match="data.shards: no such folder"):
        load_splits(DataConfig(shards=str(tmp_path / "nowhere")), "gpt2", 64)


def test_missing_text_field_is_named(tmp_path, fineweb_parquet):
    parquet = fineweb_parquet[0]
    with pytest.raises(DataError, match=r"batch_000001.parquet: no column 'body' \(columns: text, id, dump"):
        run_prepare([parquet], tmp_path / "a", workers=1, text_field="body")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "one document"}\n{"content": "no text here"}\n')
    with pytest.raises(DataError, match=r"docs.jsonl line 2: no field 'text' \(fields: content\)"):
        run_prepare([jsonl], tmp_path / "b", workers=1, val_tokens=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing half-written


def test_empty_and_too_small_corpora(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no documents with text"):
        run_prepare([empty], tmp_path / "out", workers=1)
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": ""}\n' * 3)
    with pytest.raises(DataError, match="blank.jsonl: no documents with text"):
        run_prepare([blank], tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"text": f"Document number {i} is short."}) + "\n" for i in range(6)))
    with pytest.raises(DataError, match=r"small.jsonl: .* nothing is left for training"):
        run_prepare([small], tmp_path / "out", workers=1, val_tokens=1000)
    run_prepare([small], tmp_path / "out", workers=1, val_tokens=10)  # 2 documents of validation
    with pytest.raises(DataError, match=r"data.shards: .*out holds \d+ training tokens, fewer than one window"):
        load_splits(DataConfig(shards=str(tmp_path / "out")), "gpt2", 64)
    with pytest.raises(DataError, match=r"data.shards: .*out holds \d+ validation tokens, fewer than one window"):
        load_splits(DataConfig(shards=str(tmp_path / "out")), "gpt2", 24)


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, data_dir):
    cases = [
        (["prepare", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o")], "missing.parquet: no such file"),
        (["prepare", "--out", str(tmp_path / "o")], "give local PATHs or --hf NAME"),
        (["prepare", str(data_dir / "the-verdict.txt"), "--max-tokens", "many"], "expected a number of tokens"),
        (["prepare", str(data_dir / "the-verdict.txt"), "--out", str(tmp_path / "o"), "--max-tokens", "100"],
         "--max-tokens: 100 leaves no training tokens"),
    ]
    for args, message in cases:
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert cli.main(["prepare", str(data_dir / "the-verdict.txt"), "--out", str(tmp_path / "busy")]) == 2
    assert "is not empty and holds no manifest.json" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "busy").iterdir() if not p.name.startswith(".")] == ["notes.txt"]


def test_hf_offline_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there: offline, whatever the network
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "HF_HUB_OFFLINE"):
        env.pop(var, None)
    out = tmp_path / "fw"
    proc = subprocess.run([sys.executable, "-m", "training.data", "prepare", "--hf", "HuggingFaceFW/fineweb",
                           "--hf-config", "sample-10BT", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --hf: cannot reach the Hugging Face Hub")
    assert not out.exists()


def test_config_data_kinds_and_errors():
    base = {"name": "x", "model": {"n_layers": 1, "n_heads": 1, "n_embd": 8, "context_length": 16},
            "train": {"tokens": 1024}, "arms": {"gpt": {"model": {"kind": "gpt"}}}}
    cfg = build_experiment({**base, "data": {"shards": "/some/folder"}})
    assert cfg.data.shards == "/some/folder" and cfg.data.hf is None
    cfg = build_experiment({**base, "data": {"hf": "HuggingFaceFW/fineweb"}})
    assert cfg.data.hf.name == "HuggingFaceFW/fineweb" and cfg.data.hf.split == "train"
    old = build_experiment({**base, "data": {"dataset": "tinyshakespeare", "val_fraction": 0.2}})
    assert old.data == DataConfig(dataset="tinyshakespeare", val_fraction=0.2)
    bad = [
        ({"shards": "a", "hf": {"name": "b"}}, "data.hf: set only one of data.path, data.shards, data.hf"),
        ({"path": "a.txt", "shards": "b"}, "data.shards: set only one of"),
        ({"hf": {"config": "sample-10BT"}}, "data.hf.name: required"),
        ({"hf": {"name": "x", "max_tokens": 10, "val_tokens": 100}}, "data.hf.max_tokens: 10 leaves no training"),
        ({"hf": {"name": "x", "shard_tokens": 0}}, "data.hf.shard_tokens: must be positive"),
        ({"hf": {"name": "x", "splt": "train"}}, "data.hf.splt: unknown key (did you mean split?)"),
        ({"hf": ["x"]}, "data.hf: expected a mapping"),
        ({"shard": "x"}, "data.shard: unknown key (did you mean shards?)"),
        ({"dataset": "fineweb"}, "data.dataset: unknown corpus 'fineweb'"),
    ]
    for data, message in bad:
        with pytest.raises(ConfigError) as err:
            build_experiment({**base, "data": data})
        assert str(err.value).startswith(message), str(err.value)


def test_yaml_hf_offline_is_a_data_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DATGPT_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "hub_unreachable", lambda timeout=5.0: "huggingface.co:443: no route")
    cfg = DataConfig(hf=HFDataConfig(name="HuggingFaceFW/fineweb", config="sample-10BT", max_tokens=2_000_000))
    with pytest.raises(DataError) as err:
        load_splits(cfg, "gpt2", 64)
    assert str(err.value).startswith("data.hf: cannot reach the Hugging Face Hub for 'HuggingFaceFW/fineweb'")
    assert not (tmp_path / "cache").exists()


def test_folder_without_manifest_is_read_by_file_names(tmp_path, two_files_prepared):
    folder = tmp_path / "llmc"  # e.g. shards written by llm.c's FineWeb script: same header, no manifest
    folder.mkdir()
    manifest = json.loads((two_files_prepared / "manifest.json").read_text())
    for entry in manifest["shards"]:
        (folder / f"fineweb_{entry['file']}").write_bytes((two_files_prepared / entry["file"]).read_bytes())
    splits = load_splits(DataConfig(shards=str(folder)), "gpt2", 64)
    assert splits.train.numel() == manifest["totals"]["tokens"]["train"]
    assert splits.val.numel() == manifest["totals"]["tokens"]["val"]
