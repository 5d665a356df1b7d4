"""The bytes tokenizer on every path that used to assume GPT-2: encoding and decoding, shards and their
recorded tokenizer, the vocabulary check, sampling, a byte-level run into MLflow, and lm-eval's bits per byte."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from training.data.tokenizer import BYTE_EOT_TOKEN, END_OF_TEXT, encode, get_encoding
from training.experiment import build_experiment
from training.typed_yaml import ConfigError

BYTES = get_encoding("bytes")


def _random_text(rng: random.Random, n: int) -> str:
    """Code points from every UTF-8 length (1-4 bytes), surrogates excluded."""
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


@pytest.mark.parametrize("text", ["", "First Citizen:\nBefore we proceed", "héllo wörld", "日本語のテキスト",
                                  "emoji 😀👍🏽 and a flag 🇫🇷", "e\u0301 combining", "\x00\x01\x7f control",
                                  END_OF_TEXT])
def test_bytes_round_trip(text):
    ids = BYTES.encode_ordinary(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert BYTES.decode(ids) == text  # "<|endoftext|>" typed in a text is its 13 bytes, not id 256


def test_bytes_round_trip_random_utf8():
    rng = random.Random(0)
    for _ in range(300):
        text = _random_text(rng, rng.randint(1, 40))
        assert BYTES.decode(BYTES.encode_ordinary(text)) == text


@pytest.mark.parametrize("raw", [b"\xff", b"\xc3", b"caf\xc3", b"\xe2\x9c", b"\xe2\x9cA", b"\xc0\xaf", b"\x80abc",
                                 b"\xf0\x9f\x98", b"\xed\xa0\x80"])  # truncated, overlong, lone continuation, surrogate
def test_bytes_decode_invalid_utf8_replaces(raw):
    assert BYTES.decode(list(raw)) == raw.decode("utf-8", errors="replace")


def test_bytes_decode_random_byte_strings_never_raise():
    rng = random.Random(1)
    for _ in range(500):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 24)))
        assert BYTES.decode(list(raw)) == raw.decode("utf-8", errors="replace")


def test_bytes_end_of_document_and_out_of_range_ids():
    assert BYTES.n_vocab == 257 and BYTES.eot_token == BYTE_EOT_TOKEN == 256
    assert BYTES.decode([0x68, 0x69, 256, 0xC3, 256, 0xA9]) == "hi" + END_OF_TEXT + "\ufffd" + END_OF_TEXT + "\ufffd"
    with pytest.raises(ValueError, match="id 257 is not a byte"):
        BYTES.decode([65, 257])


def test_ascii_shakespeare_bytes_are_its_characters(data_dir):
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    ids = encode(text, "bytes")
    assert len(ids) == len(text) and ids == [ord(c) for c in text]  # nanoGPT's characters, in other ids


def test_unknown_tokenizer_and_vocab_size_are_key_errors():
    base = {"name": "b", "tokenizer": "bytes", "model": {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "n_embd": 16,
                                                         "context_length": 16},
            "train": {"tokens": 1024, "micro_batch_size": 4}, "arms": {"gpt": {}}}
    assert build_experiment(base).tokenizer == "bytes"
    with pytest.raises(ConfigError, match=r"^model.vocab_size: 256 is smaller than the bytes tokenizer's 257 tokens"):
        build_experiment({**base, "model": {**base["model"], "vocab_size": 256}})
    with pytest.raises(ConfigError, match=r"^tokenizer: must be one of gpt2, bytes; got 'chars'"):
        build_experiment({**base, "tokenizer": "chars"})


# ----------------------------------------------------------------------------- shards


def _prepare(tmp_path, data_dir, tokenizer: str):
    from training.data.cli import main

    out = tmp_path / f"shards_{tokenizer}"
    texts = [str(data_dir / "the-verdict.txt"), str(data_dir / "tinyshakespeare" / "input.txt")]
    assert main(["prepare", *texts, "--out", str(out), "--val-tokens", "2000", "--tokenizer", tokenizer,
                 "--workers", "1", "--no-progress"]) == 0
    return out


def test_prepare_bytes_records_the_tokenizer_and_puts_256_before_each_document(tmp_path, data_dir):
    from training.data.shards import open_folder

    out = _prepare(tmp_path, data_dir, "bytes")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["tokenizer"] == "bytes" and manifest["eot_token"] == 256
    opened = open_folder(out, "data.shards")
    verdict = (data_dir / "the-verdict.txt").read_bytes()
    shakespeare = (data_dir / "tinyshakespeare" / "input.txt").read_bytes()
    everything = torch.cat([torch.as_tensor(opened.val.read(0, opened.val.numel())),
                            torch.as_tensor(opened.train.read(0, opened.train.numel()))]).tolist()
    assert everything == [256, *verdict, 256, *shakespeare]  # one document per file; The Verdict is validation


@pytest.mark.parametrize("prepared, experiment", [("bytes", "gpt2"), ("gpt2", "bytes")])
def test_shards_of_another_tokenizer_are_one_line_exit_2(tmp_path, data_dir, capsys, prepared, experiment):
    import yaml

    import runner

    out = _prepare(tmp_path, data_dir, prepared)
    capsys.readouterr()
    raw = {"name": "mismatch", "tokenizer": experiment, "data": {"shards": str(out)},
           "model": {"vocab_size": 50304 if experiment == "gpt2" else 257, "n_layers": 1, "n_heads": 2, "n_embd": 16,
                     "context_length": 16},
           "train": {"tokens": 1024, "micro_batch_size": 4}, "arms": {"gpt": {}},
           "checkpoint": {"dir": str(tmp_path / "ckpt")}}
    path = tmp_path / "mismatch.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert runner.main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"was tokenized with {prepared!r}, the experiment uses tokenizer {experiment!r}" in err
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "mlflow.db").exists()  # nothing written


# ----------------------------------------------------------------------------- sampling


def test_sampling_decodes_partial_utf8(one_thread):
    from models import ModelConfig, build_model
    from training.sample import generate_text

    class Prefer(torch.nn.Module):  # logits that pick 0xF0, the first byte of a 4-byte character, every time
        def forward(self, h):
            logits = torch.zeros(*h.shape[:-1], 320)
            logits[..., 0xF0] = 1.0
            logits[..., 300] = 5.0  # a padding row: never sampled
            return logits

    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="gpt", vocab_size=320, n_layers=1, n_heads=2, n_embd=16, context_length=16))
    model.lm_head = Prefer()
    (text,) = generate_text(model, "café ", tokenizer="bytes", max_new_tokens=5, temperature=0)
    assert text == "café " + "\ufffd" * 5  # five lone lead bytes, each a replacement character


# ----------------------------------------------------------------------------- lm-eval


def test_lm_eval_bits_per_byte_of_a_byte_model_is_its_loss_in_bits(one_thread):
    """lm-eval scores the local perplexity task with the model's own byte ids: its bits_per_byte is the
    model's mean loss over the held-out text's bytes (the first predicted from end-of-document), in bits."""
    pytest.importorskip("lm_eval", reason="downstream evaluation needs the eval extra")
    from models import ModelConfig, build_model
    from training import eval_tasks
    from training.downstream import evaluate_model

    text = eval_tasks.HELDOUT_FILE.read_text(encoding="utf-8").strip()
    ids = BYTES.encode_ordinary(text)
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="ngpt", vocab_size=320, n_layers=1, n_heads=2, n_embd=16,
                                    context_length=2048)).double().eval()
    assert len(ids) < 2048  # one window: the whole text after the end-of-document id
    with torch.no_grad():
        logits, _ = model(torch.tensor([[BYTE_EOT_TOKEN] + ids[:-1]]))
        nll = -torch.log_softmax(logits[0, :, :257], dim=-1).gather(-1, torch.tensor(ids)[:, None]).sum().item()
    results = evaluate_model(model, ["verdict_ppl"], tokenizer="bytes", batch_size=1, progress=False, env_info=False)
    got = results["results"]["verdict_ppl"]
    assert got["bits_per_byte,none"] == pytest.approx(nll / len(ids) / math.log(2), rel=1e-9)
    assert got["byte_perplexity,none"] == pytest.approx(math.exp(nll / len(ids)), rel=1e-9)


# ----------------------------------------------------------------------------- a byte-level run, end to end

TINY_BYTES = {
    "name": "tiny_bytes", "seeds": [0], "tokenizer": "bytes",
    "data": {"dataset": "verdict", "val_fraction": 0.1},
    "model": {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "n_embd": 32, "context_length": 32},
    "train": {"tokens": 3072, "micro_batch_size": 8, "eval_every_tokens": 1024, "eval_tokens": 512,
              "eval_windows": "spread"},
    "optim": {"lr": 3e-3},
    "arms": {"gpt": {"model": {"kind": "gpt"}},
             "ngpt": {"model": {"kind": "ngpt"}, "optim": {"lr": 1e-2, "weight_decay": 0.0}}},
    "targets": [4.5, 4.0],
    "tracking": {"log_models": False},
}


def test_a_byte_level_run_trains_into_mlflow_and_its_report_says_per_byte(tmp_path, monkeypatch, capsys, one_thread):
    import yaml
    from mlflow import MlflowClient

    import runner
    from analysis import record
    from analysis import figures as figures_mod
    from analysis.report import summarize_experiment
    from analysis.tables import format_summary

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny_bytes.yaml"
    path.write_text(yaml.safe_dump(TINY_BYTES))
    assert runner.main([str(path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "nats/byte" in printed and "nats/token" not in printed  # the runner's table says what a loss is per

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny_bytes").experiment_id])
    parent = next(r for r in runs if r.data.tags.get(record.TAG_ROLE) == record.ROLE_PARENT)
    children = [r for r in runs if r.data.tags.get(record.TAG_ROLE) == record.ROLE_CHILD]
    assert parent.data.tags[record.TAG_LOSS_UNIT] == "byte" and parent.data.params["tokenizer"] == "bytes"
    assert {c.data.params["tokenizer"] for c in children} == {"bytes"} and len(children) == 2
    from training.sample import run_tokenizer  # what `sample --run` / `evaluate --run` decode a logged model with

    assert run_tokenizer(children[0].info.run_id) == "bytes"
    old = client.create_run(client.get_experiment_by_name("tiny_bytes").experiment_id)  # logged before the param
    assert run_tokenizer(old.info.run_id) == "gpt2"
    summary_md = client.download_artifacts(parent.info.run_id, f"{record.REPORT_DIR}/summary.md", str(tmp_path))
    assert "Target: validation loss (nats/byte) (one token = one UTF-8 byte)." in open(summary_md).read()

    data, summary = summarize_experiment("tiny_bytes", tracking_uri=uri)
    assert data.loss_unit == "byte" and summary.attrs["loss_unit"] == "byte"
    assert "nats/byte" in format_summary(summary) and "nats/token" not in format_summary(summary)
    drawn = {}
    monkeypatch.setattr(figures_mod, "save_figure", lambda fig, out, stem: drawn.update({stem: fig}) or [])
    figures_mod.make_figures(data.frame, summary, data.targets, data.baseline_arm, tmp_path / "figs")
    labels = {stem: [ax.get_ylabel() for ax in fig.axes] + [ax.get_xlabel() for ax in fig.axes]
              for stem, fig in drawn.items()}
    assert "validation loss (nats/byte)" in labels["val_loss_vs_tokens"]
    assert "training loss (nats/byte)" in labels["train_loss_lr_vs_tokens"]
    assert not [stem for stem, texts in labels.items() if any("nats/token" in t for t in texts)]

    # the checkpoint remembers its tokenizer: sampling decodes bytes
    from training.sample import main as sample_main

    assert sample_main(["--checkpoint", "tiny_bytes/ngpt-seed0", "--prompt", "I had", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr()
    assert "bytes tokenizer" in out.err and out.out.startswith("I had")
