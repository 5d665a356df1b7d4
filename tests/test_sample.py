"""Text generation: the KV cache against a full recompute, determinism, the sample CLI, and models
logged to MLflow loading back."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import ModelConfig, build_model
from models.generation import KVCache
from training.checkpoint import save_checkpoint
from training.sample import main as sample_main

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(kind: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = dict(kind=kind, vocab_size=96, n_layers=2, n_heads=4, n_embd=32, context_length=16)
    config.update(overrides)
    return build_model(ModelConfig(**config))


KINDS = {"gpt": dict(kind="gpt"), "gpt_qknorm_tied": dict(kind="gpt", qk_norm=True, tied_embeddings=True),
         "ngpt": dict(kind="ngpt")}


def reference_generate(model, idx, max_new_tokens, temperature, top_k, generator):
    """No cache: the whole (last context_length tokens of the) sequence through forward() at every step,
    then argmax, or softmax(logits / T) over the top k and one multinomial draw."""
    out = idx
    for _ in range(max_new_tokens):
        logits = model(out[:, -model.config.context_length:])[0][:, -1].float()
        if temperature == 0:
            token = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                threshold = logits.sort(dim=-1, descending=True).values[:, top_k - 1:top_k]
                logits = torch.where(logits < threshold, float("-inf"), logits)
            token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        out = torch.cat([out, token], dim=1)
    return out


@pytest.mark.parametrize("variant", KINDS)
@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, None), (0.8, 10)],
                         ids=["greedy", "sampled", "top_k"])
def test_kv_cache_decoding_matches_a_full_recompute(variant, temperature, top_k):
    model = tiny(**KINDS[variant]).double().eval()
    prompt = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(1))
    # 5 + 20 tokens: the last ones go past context_length=16 (the sliding window)
    cached = model.generate(prompt, 20, temperature, top_k, torch.Generator().manual_seed(7))
    reference = reference_generate(model, prompt, 20, temperature, top_k, torch.Generator().manual_seed(7))
    assert cached.shape == (2, 25)
    assert torch.equal(cached, reference)
    assert torch.equal(cached, model.generate(prompt, 20, temperature, top_k, torch.Generator().manual_seed(7),
                                              use_cache=False))


@pytest.mark.parametrize("variant", KINDS)
def test_cached_logits_equal_the_full_forward_position_by_position(variant):
    model = tiny(**KINDS[variant]).double().eval()
    idx = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(2))
    full = model(idx)[0]
    cache = KVCache(model.config.n_layers, model.config.context_length)
    # a prompt, a chunk of 4 after cached positions (causal within the chunk), then one token at a time
    chunks = [model.logits(idx[:, :6], cache), model.logits(idx[:, 6:10], cache)]
    chunks += [model.logits(idx[:, t:t + 1], cache) for t in range(10, 16)]
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-12)


def test_generation_is_deterministic_for_a_seed_and_leaves_the_mode():
    model = tiny("ngpt")
    model.train()
    prompt = torch.tensor([[1, 2, 3]])
    first = model.generate(prompt, 12, 1.0, 20, torch.Generator().manual_seed(3))
    second = model.generate(prompt, 12, 1.0, 20, torch.Generator().manual_seed(3))
    other = model.generate(prompt, 12, 1.0, 20, torch.Generator().manual_seed(4))
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert model.training  # restored after generate()
    limited = model.generate(prompt, 30, 2.0, None, torch.Generator().manual_seed(0), vocab_size=10)
    assert int(limited[:, 3:].max()) < 10  # only the tokenizer's ids


# --------------------------------------------------------------------------------------------- CLI

def write_checkpoint(folder: Path, kind: str = "gpt", seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A checkpoint of an untrained GPT-2-vocabulary model, as the trainer writes one."""
    torch.manual_seed(seed)
    config = ModelConfig(kind=kind, n_layers=1, n_heads=2, n_embd=16, context_length=16)
    model = build_model(config)
    state = {"model": model.state_dict(), "model_config": dataclasses.asdict(config), "tokens": 0,
             "finished": True, "run_id": "r", "arm": kind, "seed": seed}
    return save_checkpoint(folder, 3, state, keep_last=1), model


def test_sample_cli_prints_text_and_is_deterministic(tmp_path, capsys):
    path, _ = write_checkpoint(tmp_path / "exp" / "parent" / "gpt-seed0")
    args = ["--checkpoint", str(path), "--prompt", "It was", "--max-new-tokens", "8", "--seed", "1",
            "--device", "cpu"]
    assert sample_main(args) == 0
    first = capsys.readouterr()
    assert first.out.startswith("It was") and len(first.out) > len("It was\n")
    assert "step 3" in first.err
    assert sample_main(args) == 0
    assert capsys.readouterr().out == first.out
    # the arm folder and EXPERIMENT/ARM-seedN (under --checkpoint-dir) name the same checkpoint
    for spec in (str(path.parent), "exp/gpt-seed0"):
        assert sample_main([*args[:1], spec, *args[2:], "--checkpoint-dir", str(tmp_path)]) == 0
        assert capsys.readouterr().out == first.out
    assert sample_main([*args, "--temperature", "0", "--num-samples", "2"]) == 0
    greedy = capsys.readouterr().out.rstrip("\n").split("\n\n---\n\n")
    assert len(greedy) == 2 and greedy[0] == greedy[1]


def test_sample_cli_runs_as_a_module(tmp_path):
    path, _ = write_checkpoint(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "training.sample", "--checkpoint", str(path), "--prompt", "Hello",
                           "--max-new-tokens", "5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello")
    bad = subprocess.run([sys.executable, "-m", "training.sample", "--checkpoint", str(tmp_path / "none.pt"),
                          "--prompt", "x"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "{tmp}/missing.pt", "--prompt", "x"], "error: --checkpoint: {tmp}/missing.pt: no such file"),
    (["--checkpoint", "nothing/here", "--prompt", "x"],
     "error: --checkpoint: nothing/here: no checkpoints of experiment"),
    (["--run", "0123456789abcdef0123456789abcdef", "--prompt", "x"],
     "error: --run: 0123456789abcdef0123456789abcdef: no checkpoint of this MLflow run"),
    (["--run", "not-a-run", "--prompt", "x"], "error: --run: 'not-a-run' is not an MLflow run id"),
    (["--checkpoint", "{ckpt}", "--prompt", "x", "--temperature", "-1"], "error: --temperature: must be >= 0"),
    (["--checkpoint", "{ckpt}", "--prompt", "x", "--max-new-tokens", "0"],
     "error: --max-new-tokens: must be at least 1"),
    (["--checkpoint", "{ckpt}"], "error: the following arguments are required: --prompt"),
    (["--checkpoint", "{ckpt}", "--run", "x", "--prompt", "x"], "error: argument --run: not allowed with"),
    (["--checkpoint", "{tmp}/junk.pt", "--prompt", "x"], "error: --checkpoint: {tmp}/junk.pt: not a readable datgpt"),
])
def test_sample_cli_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/absent.db")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    ckpt, _ = write_checkpoint(tmp_path / "ckpt")
    args = [a.format(tmp=tmp_path, ckpt=ckpt) for a in args]
    with pytest.raises(SystemExit) if message.startswith(("error: the following", "error: argument")) else _no_exit():
        code = sample_main(args)
        assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(tmp=tmp_path)), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "absent.db").exists()  # a run id lookup never creates an empty store


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------------ MLflow

def test_model_logged_to_mlflow_loads_back_with_mlflows_api(tmp_path, monkeypatch, capsys):
    import mlflow.pytorch

    from training.artifacts import log_model
    from training.tracking import Tracker

    monkeypatch.chdir(tmp_path)  # the default artifact root (./mlruns) goes here
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker()
    assert tracker.uri == uri
    experiment_id = tracker.experiment_id("logged")
    models = {}
    for kind in ("gpt", "ngpt"):
        _, model = write_checkpoint(tmp_path / "unused" / kind, kind)
        run_id = tracker.start_run(experiment_id, kind, tags={}, params={"kind": kind})
        model_uri = log_model(tracker, experiment_id, run_id, model, step=3)
        models[kind] = (run_id, model_uri, model)

    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    for kind, (run_id, model_uri, model) in models.items():
        for uri_form in (f"runs:/{run_id}/model", model_uri):
            loaded = mlflow.pytorch.load_model(uri_form)
            assert type(loaded) is type(model)
            torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
        logged = tracker.client.search_logged_models([experiment_id])
        assert {m.source_run_id for m in logged} >= {run_id}

    # --run without a checkpoint anywhere falls back to the model logged to the run
    run_id, _, model = models["ngpt"]
    args = ["--run", run_id, "--prompt", "It was", "--max-new-tokens", "6", "--temperature", "0",
            "--checkpoint-dir", str(tmp_path / "none"), "--device", "cpu"]
    assert sample_main(args) == 0
    captured = capsys.readouterr()
    assert "MLflow model runs:/" in captured.err
    from training.sample import generate_text

    assert captured.out.strip() == generate_text(model, "It was", max_new_tokens=6, temperature=0)[0].strip()

    # a fresh process that cannot import the project: the `models` package shipped with the model is used
    torch.save(idx, tmp_path / "idx.pt")
    torch.save(models["gpt"][2](idx)[0].detach(), tmp_path / "expected.pt")
    script = f"""
import sys
sys.path = [p for p in sys.path if p not in ('', {str(ROOT)!r})]
sys.meta_path = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '') + repr(f)]
import torch, mlflow.pytorch
model = mlflow.pytorch.load_model({models['gpt'][1]!r})
import models
assert {str(ROOT)!r} not in models.__file__, models.__file__
idx = torch.load('idx.pt')
torch.testing.assert_close(model(idx)[0], torch.load('expected.pt'), rtol=0, atol=0)
print('ok', type(model).__module__)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ok models.gpt" in proc.stdout, proc.stderr[-3000:]
