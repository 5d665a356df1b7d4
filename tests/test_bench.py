"""The throughput benchmark CLI on CPU (a tiny shape): numbers present and sane, bad input exits 2."""

from __future__ import annotations

import json

import pytest

from training.bench import main


def test_bench_reports_both_arms(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--shape", "tiny", "--context", "16", "--batch", "2", "--steps", "2", "--warmup", "1",
                 "--split-steps", "1", "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gpt " in text and "ngpt " in text and "ms/step" in text
    result = json.loads(out.read_text())
    gpt, ngpt = result["rows"]
    assert (gpt["arm"], ngpt["arm"]) == ("gpt", "ngpt")
    for row in (gpt, ngpt):
        assert row["ms_per_step"] > 0 and row["tokens_per_s"] == pytest.approx(2 * 16 / (row["ms_per_step"] / 1000))
        assert row["mfu"] is None and row["peak_memory_gib"] is None  # CPU: no peak to compare with
        assert min(row["forward_ms"], row["backward_ms"], row["optimizer_ms"], row["post_step_ms"]) >= 0
        assert row["config"]["context_length"] == 16
    assert gpt["flops_per_token"] == 6 * (gpt["params"] - 50304 * 32) + 12 * 2 * 32 * 16


def test_bench_bad_input(capsys):
    assert main(["--shape", "huge"]) == 2
    assert main(["--shape", "tiny", "--set", "model.n_heads=3", "--device", "cpu"]) == 2
    assert main(["--shape", "tiny", "--set", "train.tokens=5", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: --shape: unknown shape 'huge'")
    assert err[1] == "error: model: n_heads: 3 does not divide n_embd=32"
    assert err[2].startswith("error: --set: only model.* keys")
