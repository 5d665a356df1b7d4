"""Tokenizer and data: offline GPT-2 ranks, corpus lookup, the fixed split, deterministic batches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from training.config import DataConfig
from training.data import corpus as data_mod
from training.data import DataError
from training.data.corpus import TrainBatches, load_splits, resolve_corpus, val_windows
from training.data.tokenizer import encode, get_encoding

ROOT = Path(__file__).resolve().parents[1]


def test_gpt2_tokenizer_offline(data_dir):
    assert encode("Hello world") == [15496, 995]
    assert get_encoding().n_vocab == 50257
    assert get_encoding().eot_token == 50256
    text = (data_dir / "the-verdict.txt").read_text(encoding="utf-8")
    assert len(encode(text)) == 5145


def test_corpus_lookup_order(data_dir, tmp_path, monkeypatch):
    assert resolve_corpus(DataConfig(dataset="verdict")) == data_dir / "the-verdict.txt"
    shakespeare = data_dir / "tinyshakespeare" / "input.txt"  # a prefix of the corpus: only as data.path
    assert resolve_corpus(DataConfig(dataset="verdict", path=str(shakespeare))) == shakespeare
    own = tmp_path / "own.txt"
    own.write_text("a local corpus")
    assert resolve_corpus(DataConfig(path=str(own))) == own  # data.path wins
    with pytest.raises(DataError, match="data.path: no such file"):
        resolve_corpus(DataConfig(path=str(tmp_path / "missing.txt")))


@pytest.mark.parametrize("name, change", [
    ("verdict", lambda b: b.replace(b"\n", b"\r\n")),  # a CRLF copy: 515 validation tokens instead of 514
    ("verdict", lambda b: b[:-1]),
    ("tinyshakespeare", lambda b: b),  # tests/fixtures holds only the first 998 lines
])
def test_a_local_copy_of_a_builtin_corpus_must_match_its_sha256(name, change, data_dir, tmp_path, monkeypatch):
    corpus = data_mod.BUILTIN_CORPORA[name]
    copy = tmp_path / corpus.filename
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(change((data_dir / corpus.filename).read_bytes()))
    got = hashlib.sha256(copy.read_bytes()).hexdigest()
    monkeypatch.setenv("DATGPT_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data_mod.urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataError) as err:
        resolve_corpus(DataConfig(dataset=name))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"data.dataset: {copy} is not the {name!r} corpus")
    assert f"SHA-256 {got}, expected {corpus.sha256}" in message and "data.path" in message
    assert copy.read_bytes() == change((data_dir / corpus.filename).read_bytes())  # left as it was
    # the documented way to train on a modified copy on purpose
    assert resolve_corpus(DataConfig(dataset=name, path=str(copy))) == copy


def test_runner_refuses_a_changed_local_corpus_in_one_line(data_dir, tmp_path, monkeypatch, capsys):
    import runner

    (tmp_path / "the-verdict.txt").write_bytes((data_dir / "the-verdict.txt").read_bytes().replace(b"\n", b"\r\n"))
    monkeypatch.setenv("DATGPT_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert runner.main([str(ROOT / "experiments" / "verdict_vs_baseline.yaml"), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"error: data.dataset: {tmp_path / 'the-verdict.txt'} is not the 'verdict' corpus")
    assert "expected b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f" in err


def test_missing_corpus_download_failure_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("DATGPT_DATA_DIR", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as err:
        resolve_corpus(DataConfig(dataset="verdict"))
    message = str(err.value)
    assert message.startswith("data.dataset: 'verdict' is not in") and str(tmp_path / "the-verdict.txt") in message
    assert list(tmp_path.rglob("*")) == []  # nothing half-written


def test_download_checks_the_checksum(tmp_path, monkeypatch, data_dir):
    payload = (data_dir / "the-verdict.txt").read_bytes()

    class Response:
        def __init__(self, body):
            self.body = body

        def read(self, n=-1):
            chunk, self.body = self.body[:n], self.body[n:]
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setenv("DATGPT_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data_mod.urllib.request, "urlopen", lambda url, timeout: Response(b"tampered"))
    with pytest.raises(DataError, match="checksum mismatch"):
        resolve_corpus(DataConfig(dataset="verdict"))
    assert list(tmp_path.rglob("*")) == []
    monkeypatch.setattr(data_mod.urllib.request, "urlopen", lambda url, timeout: Response(payload))
    path = resolve_corpus(DataConfig(dataset="verdict"))  # downloaded, verified and cached
    assert path == tmp_path / "the-verdict.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data_mod.BUILTIN_CORPORA["verdict"].sha256


def test_fixed_split_and_validation_windows(data_dir):
    splits = load_splits(DataConfig(dataset="verdict", val_fraction=0.1), "gpt2", 64)
    assert splits.n_tokens == 5145 and splits.val.numel() == 514
    full = torch.cat([splits.train, splits.val])
    assert torch.equal(full[:5], torch.tensor(encode("I HAD always thought Jack")[:5]))
    x, y = val_windows(splits.val, 64, eval_tokens=10_000)
    assert x.shape == (8, 64) and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1, 0], y[0, -1])
    x2, _ = val_windows(splits.val, 64, eval_tokens=100)
    assert x2.shape == (2, 64)


def test_spread_validation_windows_cover_the_whole_split(data_dir, tmp_path):
    from training.data.shards import ShardedTokens

    shakespeare = str(data_dir / "tinyshakespeare" / "input.txt")  # the fixture: its first 998 lines, read as a file
    splits = load_splits(DataConfig(path=shakespeare, val_fraction=0.1), "bytes", 64)
    val = splits.val
    n_val = val.numel()
    assert n_val > 20 * 64
    x, y = val_windows(val, 64, eval_tokens=1024, placement="spread")
    assert x.shape == y.shape == (16, 64) and torch.equal(x[:, 1:], y[:, :-1])

    def starts_of(rows):
        return [int(torch.nonzero((val.unfold(0, 64, 1) == row).all(dim=1))[0]) for row in rows]

    for rows, n in ((x, 16), (val_windows(val, 64, eval_tokens=10 ** 9, placement="spread")[0], (n_val - 1) // 64)):
        starts = starts_of(rows)
        assert len(starts) == n and starts[0] == 0 and starts[-1] + 64 == n_val - 1  # first token to last target
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert min(gaps) >= 64 and max(gaps) - min(gaps) <= 1  # evenly spaced, targets never overlap
    first, _ = val_windows(val, 64, eval_tokens=1024)  # the default: the first 16 windows in a row
    assert torch.equal(first.flatten(), val[:16 * 64])
    # memory-mapped shards give the same windows
    path = tmp_path / "val.bin"
    from training.data.shards import write_shard

    write_shard(path, val.numpy().astype("uint16"))
    sharded, _ = val_windows(ShardedTokens([path]), 64, eval_tokens=1024, placement="spread")
    assert torch.equal(sharded, x)


def test_context_longer_than_data_is_rejected(data_dir, tmp_path):
    with pytest.raises(DataError, match="data.val_fraction: .* fewer than one window"):
        load_splits(DataConfig(dataset="verdict", val_fraction=0.1), "gpt2", 1024)
    small = tmp_path / "small.txt"
    small.write_text("a few words only " * 20)
    with pytest.raises(DataError, match="model.context_length: 64 is longer than"):
        load_splits(DataConfig(path=str(small), val_fraction=0.9), "gpt2", 64)


def test_batches_are_a_function_of_seed_and_step():
    tokens = torch.arange(1000)
    a = TrainBatches(tokens, 16, micro_batch_size=4, grad_accum_steps=2, seed=0)
    b = TrainBatches(tokens, 16, micro_batch_size=4, grad_accum_steps=2, seed=0)
    x, y = a.get(3, 1)
    assert x.shape == (4, 16) and torch.equal(y, x + 1)  # targets are the next tokens
    assert torch.equal(a.get(5, 0)[0], b.get(5, 0)[0]) and torch.equal(a.get(3, 1)[0], b.get(3, 1)[0])
    assert not torch.equal(a.get(5, 0)[0], a.get(6, 0)[0])
    assert not torch.equal(a.get(5, 0)[0], TrainBatches(tokens, 16, 4, 2, seed=1).get(5, 0)[0])
    # one global batch whatever the split into micro-batches: 2 x 4 rows == 1 x 8 rows
    whole = TrainBatches(tokens, 16, micro_batch_size=8, grad_accum_steps=1, seed=0).get(2, 0)[0]
    halves = torch.cat([a.get(2, 0)[0], a.get(2, 1)[0]])
    assert torch.equal(whole, halves)
    assert int(x.max()) < 1000
