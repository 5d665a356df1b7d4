"""The throughput benchmark CLI on CPU (a tiny shape): numbers present and sane, bad input exits 2."""

from __future__ import annotations

import json

import pytest

from models import ModelConfig, build_model
from training.bench import main


def test_bench_reports_both_arms(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--arms", "gpt,ngpt,gpt-muon", "--shape", "tiny", "--context", "16", "--batch", "2", "--steps", "2",
                 "--warmup", "1", "--split-steps", "1", "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gpt " in text and "ngpt " in text and "gpt+muon " in text and "ms/step" in text
    result = json.loads(out.read_text())
    gpt, ngpt, muon = result["rows"]
    assert (gpt["arm"], ngpt["arm"], muon["arm"]) == ("gpt", "ngpt", "gpt+muon")
    assert muon["config"] == gpt["config"]  # the same model, another optimizer
    for row in (gpt, ngpt, muon):
        assert row["ms_per_step"] > 0 and row["tokens_per_s"] == pytest.approx(2 * 16 / (row["ms_per_step"] / 1000))
        assert row["mfu"] is None and row["peak_memory_gib"] is None  # CPU: no peak to compare with
        split = [row["forward_ms"], row["backward_ms"], row["optimizer_ms"], row["post_step_ms"]]
        assert min(split) > 0  # every phase was timed (how long each takes is the benchmark's business)
        assert row["config"]["context_length"] == 16
    assert gpt["flops_per_token"] == 6 * (gpt["params"] - 50304 * 32) + 12 * 2 * 32 * 16


def test_bench_bad_input(capsys):
    assert main(["--shape", "huge"]) == 2
    assert main(["--shape", "tiny", "--set", "model.n_heads=3", "--device", "cpu"]) == 2
    assert main(["--shape", "tiny", "--set", "train.tokens=5", "--device", "cpu"]) == 2
    assert main(["--shape", "tiny", "--arms", "gpt,ngpt-plan", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[3] == "error: --arms: unknown arm 'ngpt-plan'; known: gpt, ngpt, ngpt-plain, gpt-muon"
    assert err[0].startswith("error: --shape: unknown shape 'huge'")
    assert err[1] == "error: model: n_heads: 3 does not divide n_embd=32"
    assert err[2].startswith("error: --set: only model.* keys")


def test_bench_activations_only(tmp_path, capsys):
    """--steps 0 --activations: nothing timed, the saved activations predicted per arm."""
    out = tmp_path / "bench.json"
    assert main(["--arms", "gpt,ngpt,ngpt-plain", "--shape", "tiny", "--context", "16", "--batch", "3",
                 "--steps", "0", "--activations", "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "saved for backward (bf16 autocast, eager" in text and "ms/step" not in text
    gpt, ngpt, plain = json.loads(out.read_text())["rows"]
    assert (gpt["arm"], ngpt["arm"], plain["arm"]) == ("gpt", "ngpt", "ngpt-plain")
    assert plain["config"] == ngpt["config"] and plain["saved_kib_per_token"] > ngpt["saved_kib_per_token"]
    for row in (gpt, ngpt):
        assert row["saved_activations_gib"] > 0 and row["saved_kib_per_token"] > 0
        assert row["predicted_gib"] == pytest.approx(row["saved_activations_gib"] + row["weights_adamw_gib"])
        assert row["weights_adamw_gib"] * 2**30 == pytest.approx(12 * sum(
            p.numel() for p in build_model(ModelConfig(**row["config"])).parameters()))
    # at this width the float32 log-softmax over the vocabulary of 50,304 dominates: 196.5 KiB per token
    assert 196.5 < gpt["saved_kib_per_token"] < 1.1 * 196.5
    assert main(["--shape", "tiny", "--steps", "0", "--device", "cpu"]) == 2
    assert "--steps: 0 times nothing" in capsys.readouterr().err
