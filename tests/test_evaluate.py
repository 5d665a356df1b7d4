"""Downstream evaluation: the lm-eval adapter (training/lm_eval_adapter.py) against the models' own
logits and loss, the local tasks, `python -m training.evaluate`, the `eval` section while training,
and the accuracy figure and table (analysis/accuracy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("lm_eval", reason="downstream evaluation needs the eval extra")

from lm_eval.api.instance import Instance  # noqa: E402

from analysis.record import eval_metric, eval_results_artifact, metric_from_lm_eval, parse_eval_metric  # noqa: E402
from models import ModelConfig, build_model  # noqa: E402
from training import eval_tasks  # noqa: E402
from training.data.tokenizer import EOT_TOKEN, GPT2_N_VOCAB, get_encoding  # noqa: E402
from training.experiment import build_experiment  # noqa: E402
from training.lm_eval_adapter import DatgptLM  # noqa: E402
from training.typed_yaml import ConfigError  # noqa: E402

CONTEXT = 32
ENC = get_encoding("gpt2")
HELDOUT = eval_tasks.HELDOUT_FILE.read_text(encoding="utf-8")


def tiny(kind: str, dtype=torch.float64, seed: int = 0, vocab_size: int = 50304) -> torch.nn.Module:
    """A tiny model whose padded vocabulary rows (if any) would win every argmax if they were not cut off."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(kind=kind, n_layers=2, n_heads=2, n_embd=32, context_length=CONTEXT,
                                    vocab_size=vocab_size))
    with torch.no_grad():
        rows = model.lm_head.weight[GPT2_N_VOCAB:]
        rows.copy_(model.lm_head.weight[:rows.shape[0]] * 50)  # huge logits on ids >= 50,257
    return model.to(dtype).eval()


def ll_requests(pairs):
    return [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(pairs)]


def direct_logprob(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """The sum of log-softmax values over the tokenizer's ids, straight from the model's logits."""
    tokens = (ctx + cont)[-(CONTEXT + 1):]
    logits, _ = model(torch.tensor([tokens[:-1]]))
    logp = torch.log_softmax(logits[0, -len(cont):, :GPT2_N_VOCAB].double(), dim=-1)
    target = torch.tensor(cont)
    return logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


PAIRS = [("I had always thought", " Jack Gisburn rather a cheap genius"),
         ("The Strouds stand alone, and", " happen once"),
         ("", "It was"),  # empty context: the end-of-text token conditions
         ("He laughed. ", "Only the irony of it"),  # trailing space moves to the continuation
         ("Mrs. Stroud", "!")]


@pytest.mark.parametrize("kind", ["gpt", "ngpt"])
def test_loglikelihood_is_the_sum_of_log_softmax_of_the_logits(kind, one_thread):
    model = tiny(kind)
    lm = DatgptLM(model, batch_size=2, progress=False)
    got = lm.loglikelihood(ll_requests(PAIRS), disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        if context:  # lm-eval's causal encoding: encode the whole string, split after the context's tokens
            stripped = context.rstrip()
            whole, ctx = ENC.encode_ordinary(stripped + context[len(stripped):] + continuation), ENC.encode_ordinary(stripped)
            cont = whole[len(ctx):]
        else:
            ctx, cont = [EOT_TOKEN], ENC.encode_ordinary(continuation)
        want, want_greedy = direct_logprob(model, ctx, cont)
        assert logprob == pytest.approx(want, abs=1e-10, rel=1e-12)
        assert greedy == want_greedy
        assert logprob < 0


@pytest.mark.parametrize("kind,dtype,tol", [("gpt", torch.float64, 1e-10), ("ngpt", torch.float64, 1e-10),
                                            ("ngpt", torch.float32, 1e-5)])
def test_batch_size_and_padding_do_not_change_results(kind, dtype, tol, one_thread):
    model = tiny(kind, dtype)
    words = HELDOUT.split()
    pairs = [(" ".join(words[i:i + 3 + (7 * i) % 40]), " " + words[i + 3 + (7 * i) % 40]) for i in range(0, 60, 3)]
    one = DatgptLM(model, batch_size=1, progress=False).loglikelihood(ll_requests(pairs), disable_tqdm=True)
    many = DatgptLM(model, batch_size=7, progress=False).loglikelihood(ll_requests(pairs), disable_tqdm=True)
    again = DatgptLM(model, batch_size=7, progress=False).loglikelihood(ll_requests(pairs), disable_tqdm=True)
    assert many == again  # deterministic
    for (a, ga), (b, gb) in zip(one, many):
        assert a == pytest.approx(b, abs=tol) and ga == gb
    lengths = {len(ENC.encode_ordinary(c + x)) for c, x in pairs}
    assert len(lengths) > 5  # the batches really were padded


def test_is_greedy_and_vocabulary_slice(one_thread):
    model = tiny("gpt")
    lm = DatgptLM(model, progress=False)
    ctx = ENC.encode_ordinary("I had always thought Jack Gisburn")
    greedy = model.generate(torch.tensor([ctx]), 4, temperature=0, vocab_size=GPT2_N_VOCAB)[0, len(ctx):].tolist()
    assert all(t < GPT2_N_VOCAB for t in greedy)
    other = greedy[:-1] + [(greedy[-1] + 1) % GPT2_N_VOCAB]
    (lp_greedy, is_greedy), (lp_other, not_greedy) = lm.score_tokens([(ctx, greedy), (ctx, other)])
    assert is_greedy and not not_greedy and lp_greedy > lp_other
    # the padded ids carry no probability: the real ids' probabilities sum to one
    logits, _ = model(torch.tensor([ctx]))
    full = torch.log_softmax(logits[0, -1].double(), dim=-1)
    assert full[GPT2_N_VOCAB:].exp().sum() > 0.5  # without the slice the padded rows would dominate
    assert lm._log_softmax(logits[0, -1:]).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_loglikelihood_rolling_is_the_models_loss_times_tokens(one_thread):
    model = tiny("ngpt", vocab_size=GPT2_N_VOCAB)  # no padded rows: the model's own loss is over the real ids
    lm = DatgptLM(model, batch_size=3, progress=False)
    words = HELDOUT.split()
    short, long_text = " ".join(words[:12]), " ".join(words[:60])
    ids, long_ids = ENC.encode_ordinary(short), ENC.encode_ordinary(long_text)
    n = len(long_ids)
    assert len(ids) <= CONTEXT and 2 * CONTEXT < n < 3 * CONTEXT
    _, loss = model(torch.tensor([[EOT_TOKEN] + ids[:-1]]), torch.tensor([ids]))  # mean over len(ids) tokens
    # every token predicted once: [EOT]+ids[:T-1] -> ids[:T]; ids[T-1:2T-1] -> ids[T:2T]; the last T inputs -> the rest
    windows = [([EOT_TOKEN] + long_ids[:CONTEXT - 1], long_ids[:CONTEXT], CONTEXT),
               (long_ids[CONTEXT - 1:2 * CONTEXT - 1], long_ids[CONTEXT:2 * CONTEXT], CONTEXT),
               (long_ids[n - CONTEXT - 1:n - 1], long_ids[n - CONTEXT:], n - 2 * CONTEXT)]
    want_long = 0.0
    for inp, tgt, scored in windows:
        targets = torch.tensor([[-100] * (CONTEXT - scored) + tgt[CONTEXT - scored:]])
        _, window_loss = model(torch.tensor([inp]), targets)
        want_long -= window_loss.item() * scored
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (short,), 0),
                                    Instance("loglikelihood_rolling", {}, (long_text,), 1)], disable_tqdm=True)
    # the model's forward takes its cross-entropy in float32 (the adapter sums float64 log-probabilities)
    assert got[0] == pytest.approx(-loss.item() * len(ids), rel=1e-6)
    assert got[1] == pytest.approx(want_long, rel=1e-6)


def test_long_contexts_are_truncated_from_the_left(one_thread):
    model = tiny("gpt")
    lm = DatgptLM(model, batch_size=4, progress=False)
    ctx = ENC.encode_ordinary(" ".join(HELDOUT.split()[:60]))
    cont = ENC.encode_ordinary(" late--it would have been")
    assert len(ctx) > 2 * CONTEXT
    (full,) = lm.score_tokens([(ctx, cont)])
    kept = ctx[-(CONTEXT + 1 - len(cont)):]  # the model reads its last CONTEXT tokens of ctx + cont[:-1]
    (cut,) = lm.score_tokens([(kept, cont)])
    assert full == cut
    assert full[0] == pytest.approx(direct_logprob(model, ctx, cont)[0], abs=1e-10)
    (shorter,) = lm.score_tokens([(kept[1:], cont)])
    assert shorter[0] != pytest.approx(full[0], abs=1e-6)  # one token less of context does change it
    # through lm-eval's string interface too
    text = ENC.decode(ctx)
    (via_strings,) = lm.loglikelihood(ll_requests([(text, " late--it would have been")]), disable_tqdm=True)
    assert via_strings[0] == pytest.approx(full[0], abs=1e-10)
    with pytest.raises(ValueError, match="does not fit"):
        lm.score_tokens([(ctx[:2], ctx[:CONTEXT + 1])])


def test_generate_until_uses_the_models_decoding_and_stops(one_thread):
    model = tiny("ngpt")
    prompts = ["I had always thought", "The king said", "It was", "Mrs. Stroud"]
    want, tokens = {}, {}
    for p in prompts:
        ids = ENC.encode_ordinary(p)
        tokens[p] = model.generate(torch.tensor([ids]), 40, temperature=0, vocab_size=GPT2_N_VOCAB)[0, len(ids):].tolist()
        want[p] = ENC.decode(tokens[p])
    stop = want[prompts[0]][5:8]  # a string inside the first greedy continuation
    requests = [Instance("generate_until", {}, (p, {"until": [stop], "max_gen_toks": 40}), i)
                for i, p in enumerate(prompts)]
    for bs in (1, 3):
        got = DatgptLM(model, batch_size=bs, progress=False).generate_until(requests, disable_tqdm=True)
        for p, text in zip(prompts, got):
            assert text == want[p].split(stop)[0]
    assert len(got[0]) < len(want[prompts[0]])
    short = DatgptLM(model, progress=False).generate_until(
        [Instance("generate_until", {}, ("It was", {"until": [], "max_gen_toks": 3}), 0)], disable_tqdm=True)
    assert short[0] == ENC.decode(tokens["It was"][:3])  # max_gen_toks tokens


def test_local_task_files_are_rebuilt_identically():
    for path, content in eval_tasks.build(HELDOUT).items():
        assert path.read_text(encoding="utf-8") == content, f"{path.name}: run python -m training.eval_tasks"
    lambada = [json.loads(line) for line in eval_tasks.LAMBADA_FILE.read_text().splitlines()]
    choice = [json.loads(line) for line in eval_tasks.CHOICE_FILE.read_text().splitlines()]
    assert len(lambada) >= 25 and len(choice) >= 35
    for doc in lambada:  # the target is the next word of the held-out text
        assert doc["target"].startswith(" ") and (doc["context"] + doc["target"]) in " ".join(HELDOUT.split())
    assert {d["label"] for d in choice} == {0, 1} and all(sorted(d["choices"][0].split()) == sorted(d["choices"][1].split())
                                                          for d in choice)
    assert sum(len(p.read_bytes()) for p in eval_tasks.TASKS_DIR.iterdir()) < 60_000


def test_record_names():
    assert eval_metric("verdict_lambada", "acc") == "eval/verdict_lambada/acc"
    assert parse_eval_metric("eval/arc_easy/acc_norm") == ("arc_easy", "acc_norm")
    assert parse_eval_metric("val/loss") is None and parse_eval_metric("eval/x") is None
    assert metric_from_lm_eval("acc,none") == "acc" and metric_from_lm_eval("acc_stderr,none") == "acc_stderr"
    assert metric_from_lm_eval("exact_match,strict-match") == "exact_match_strict-match"
    assert eval_results_artifact(80, ["verdict_lambada", "arc_easy"]) == "eval/step_00000080_arc_easy+verdict_lambada.json"


# ----------------------------------------------------------------------------- config


BASE = {"name": "e", "arms": {"gpt": {"model": {"kind": "gpt", "n_layers": 2, "n_heads": 2, "n_embd": 32,
                                                 "context_length": 32}}},
        "train": {"tokens": 4096, "micro_batch_size": 4}}


def test_eval_section_is_typed_validated_and_off_by_default():
    plain = build_experiment(dict(BASE))
    assert not plain.eval.active and "eval" not in plain.to_dict()
    with_eval = build_experiment({**BASE, "eval": {"tasks": "verdict_choice", "every_tokens": 1024, "limit": 8}})
    assert with_eval.eval.tasks == ["verdict_choice"] and with_eval.eval.batch_size == 16
    assert with_eval.to_dict()["eval"]["every_tokens"] == 1024
    assert with_eval.config_hash() != plain.config_hash()
    assert with_eval.arm_hash(with_eval.arms[0], 0) == plain.arm_hash(plain.arms[0], 0)  # training is the same
    for bad, where in [({"taks": ["x"]}, "eval.taks: unknown key (did you mean tasks?)"),
                       ({"tasks": ["a", "a"]}, "eval.tasks: duplicate"),
                       ({"tasks": ["a,b"]}, "eval.tasks[0]"),
                       ({"tasks": ["a"], "every_tokens": -1}, "eval.every_tokens: must be non-negative"),
                       ({"tasks": ["a"], "limit": 0}, "eval.limit: must be positive"),
                       ({"tasks": ["a"], "batch_size": 0}, "eval.batch_size: must be positive"),
                       ("verdict_choice", "eval: expected a mapping")]:
        with pytest.raises(ConfigError) as err:
            build_experiment({**BASE, "eval": bad})
        assert str(err.value).startswith(where), str(err.value)


# ----------------------------------------------------------------------------- training and analysis

TINY_EVAL = {
    "name": "tiny_eval",
    "seeds": [0],
    "data": {"dataset": "verdict", "val_fraction": 0.1},
    "model": {"n_layers": 2, "n_heads": 2, "n_embd": 32, "context_length": 32},
    "train": {"tokens": 2048, "micro_batch_size": 4, "grad_accum_steps": 2, "eval_every_tokens": 1024,
              "eval_tokens": 256},
    "optim": {"lr": 3e-3},
    "arms": {"gpt": {"model": {"kind": "gpt"}}, "ngpt": {"model": {"kind": "ngpt"}, "optim": {"weight_decay": 0.0}}},
    "targets": [10.0],
    "tracking": {"log_models": False, "log_samples": False, "log_diagnostics": False},
    "eval": {"tasks": ["verdict_lambada", "verdict_choice"], "every_tokens": 1024, "limit": 6, "batch_size": 8},
}


def test_eval_section_evaluates_both_arms_at_the_same_tokens_and_reports(tmp_path, monkeypatch, capsys, data_dir,
                                                                        one_thread):
    import runner
    from mlflow import MlflowClient

    from analysis.report import build_report

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny_eval.yaml"
    path.write_text(yaml.safe_dump(TINY_EVAL, sort_keys=False))
    assert runner.main([str(path), "--no-progress"]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_eval")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("datgpt.role") == "child"]
    assert len(children) == 2
    tokens_at = {}
    for run in children:
        rid = run.info.run_id
        assert run.data.params["eval.tasks"] == "['verdict_lambada', 'verdict_choice']"
        acc = client.get_metric_history(rid, "eval/verdict_choice/acc")
        steps = sorted(m.step for m in acc)
        assert steps == [0, 4, 8]  # 256 tokens a step: at 0, on crossing 1024 tokens, at the end
        tokens = {m.step: m.value for m in client.get_metric_history(rid, "tokens")}
        tokens_at[run.data.tags["datgpt.arm"]] = [tokens[s] for s in steps]
        assert all(0.0 <= m.value <= 1.0 for m in acc)
        for name in ("eval/verdict_lambada/acc", "eval/verdict_lambada/perplexity", "eval/verdict_choice/acc_norm",
                     "eval/verdict_choice/acc_stderr"):
            assert len(client.get_metric_history(rid, name)) == 3, name
        files = {a.path for a in client.list_artifacts(rid, "eval")}
        assert files == {eval_results_artifact(s, TINY_EVAL["eval"]["tasks"]) for s in steps}
        results = json.loads(Path(client.download_artifacts(rid, eval_results_artifact(8, TINY_EVAL["eval"]["tasks"]),
                                                            str(tmp_path))).read_text())
        assert results["results"]["verdict_choice"]["acc,none"] == run.data.metrics["eval/verdict_choice/acc"]
        assert results["n-samples"]["verdict_choice"]["effective"] == 6  # eval.limit
    assert tokens_at["gpt"] == tokens_at["ngpt"] == [0.0, 1024.0, 2048.0]

    report = build_report("tiny_eval", tmp_path / "figs")
    names = {p.name for p in report.files}
    assert {"accuracy_vs_tokens.png", "accuracy_vs_tokens.pdf", "accuracy.csv", "accuracy.md", "accuracy.tex"} <= names
    table = __import__("pandas").read_csv(tmp_path / "figs" / "accuracy.csv")
    assert set(table["task"]) == {"verdict_lambada", "verdict_choice", "average"}
    assert set(table["arm"]) == {"gpt", "ngpt"} and (table["tokens"] == 2048).all()
    by = {(r.task, r.arm): r for r in table.itertuples()}
    final = {r.data.tags["datgpt.arm"]: r.data.metrics for r in children}
    for arm in ("gpt", "ngpt"):
        assert by[("verdict_choice", arm)].mean == pytest.approx(final[arm]["eval/verdict_choice/acc"])
        assert by[("verdict_choice", arm)].interval == "lm-eval stderr (1 seed)"
        assert by[("average", arm)].mean == pytest.approx((final[arm]["eval/verdict_choice/acc"]
                                                           + final[arm]["eval/verdict_lambada/acc"]) / 2)
    md = (tmp_path / "figs" / "accuracy.md").read_text()
    assert md.startswith("| Task | Metric | gpt | ngpt |") and "verdict_lambada | acc |" in md
    assert "\\begin{tabular}{llrr}" in (tmp_path / "figs" / "accuracy.tex").read_text()


# ----------------------------------------------------------------------------- python -m training.evaluate


def _save_tiny_checkpoint(root: Path, run_id: str) -> Path:
    """A finished nGPT checkpoint at step 5 (1,280 tokens) of child run `run_id`."""
    from dataclasses import asdict

    from training.checkpoint import save_checkpoint

    model = tiny("ngpt", torch.float32)
    folder = root / "checkpoints" / "cli" / "parent" / "ngpt-seed0"
    return save_checkpoint(folder, 5, {"model": model.state_dict(), "model_config": asdict(model.config),
                                       "tokens": 1280, "finished": True, "run_id": run_id, "arm": "ngpt", "seed": 0}, 1)


@pytest.fixture
def checkpoint(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return _save_tiny_checkpoint(tmp_path, "f" * 32)


@pytest.fixture
def run_with_checkpoint(tmp_path, monkeypatch):
    """An MLflow child run (sqlite in tmp_path) and its checkpoint."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("cli"), tags={"datgpt.arm": "ngpt"}).info.run_id
    client.log_metric(run_id, "tokens", 1280.0, step=5)
    return client, run_id, _save_tiny_checkpoint(tmp_path, run_id)


def test_evaluate_command_prints_and_logs_to_the_run(run_with_checkpoint, tmp_path, capsys, one_thread):
    from training.evaluate import main

    client, run_id, path = run_with_checkpoint
    out_file = tmp_path / "out" / "results.json"
    assert main(["--checkpoint", str(path), "--tasks", "verdict_choice,verdict_lambada", "--limit", "5",
                 "--batch-size", "4", "--no-progress", "--output", str(out_file)]) == 0
    printed = capsys.readouterr()
    assert "|verdict_choice |" in printed.out and "acc_norm" in printed.out and "perplexity" in printed.out
    assert "step 5, 1,280 tokens" in printed.err
    written = json.loads(out_file.read_text())
    assert written["results"]["verdict_lambada"]["sample_len"] == 5
    assert "eval/verdict_choice/acc" not in client.get_run(run_id).data.metrics  # --checkpoint logs nothing

    assert main(["--run", run_id, "--tasks", "verdict_choice", "--limit", "5", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"logged to run {run_id} at step 5 (1,280 tokens)" in err
    metrics = client.get_run(run_id).data.metrics
    assert {"eval/verdict_choice/acc", "eval/verdict_choice/acc_norm", "eval/verdict_choice/acc_stderr"} <= set(metrics)
    assert metrics["eval/verdict_choice/acc"] == written["results"]["verdict_choice"]["acc,none"]  # same model
    (acc,) = client.get_metric_history(run_id, "eval/verdict_choice/acc")
    assert acc.step == 5
    artifact = eval_results_artifact(5, ["verdict_choice"])
    assert artifact in {a.path for a in client.list_artifacts(run_id, "eval")}

    assert main(["--run", "0" * 32, "--tasks", "verdict_choice"]) == 2  # a run the store does not have
    assert capsys.readouterr().err == f"error: --run: no run {'0' * 32} in the tracking store {mlflow_uri()}\n"


def mlflow_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


@pytest.mark.parametrize("args,message", [
    (["--tasks", "verdict_choice", "--limit", "0"], "error: --limit: must be at least 1, got 0"),
    (["--tasks", "verdict_choice", "--batch-size", "0"], "error: --batch-size: must be at least 1"),
    (["--tasks", " , "], "error: --tasks: give at least one lm-eval task"),
    (["--tasks", "verdict_choise"], "error: --tasks: unknown lm-eval task 'verdict_choise' (did you mean verdict_choice?)"),
])
def test_evaluate_command_bad_input_is_one_line(checkpoint, capsys, args, message):
    from training.evaluate import main

    code = main(["--checkpoint", str(checkpoint), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


@pytest.mark.parametrize("tasks, hint", [("verdict_lambda", " (did you mean verdict_lambada?)"),
                                         ("datgpt_locl", " (did you mean datgpt_local?)"),
                                         ("datgpt_local,no_such_task_xyz", "")])
def test_an_unknown_task_is_named_before_any_loading(checkpoint, capsys, monkeypatch, tasks, hint):
    """One line naming the local tasks and their tag, without indexing lm-eval's ~14,000 task files (a
    TaskManager: seconds) and without loading the model."""
    from training import downstream, evaluate

    monkeypatch.setattr(downstream, "task_manager", lambda names: pytest.fail("indexed lm-eval's tasks"))
    monkeypatch.setattr(evaluate, "_load", lambda args: pytest.fail("loaded the model first"))
    assert evaluate.main(["--checkpoint", str(checkpoint), "--tasks", tasks]) == 2
    err = capsys.readouterr().err
    name = tasks.split(",")[-1]
    assert err == (f"error: --tasks: unknown lm-eval task {name!r}{hint}; the local tasks (no network) are "
                   f"verdict_lambada, verdict_choice, verdict_ppl, or all of them as the tag datgpt_local\n")


def test_a_task_name_found_in_lm_evals_files_is_left_to_its_task_manager(monkeypatch):
    from training import downstream

    downstream.check_task_names(["arc_easy", "hellaswag", "datgpt_local"])  # real names: no error, no index
    with pytest.raises(downstream.EvalSetupError, match="unknown lm-eval task 'arc_eas'.*did you mean arc_easy"):
        downstream.check_task_names(["arc_eas"])


def test_evaluate_command_missing_checkpoint(checkpoint, capsys):
    from training.evaluate import main

    assert main(["--checkpoint", "nope/gpt", "--tasks", "verdict_choice"]) == 2
    assert capsys.readouterr().err.startswith("error: --checkpoint: nope/gpt: no checkpoints of experiment 'nope'")
    assert main(["--run", "not-a-run", "--tasks", "verdict_choice"]) == 2
    assert capsys.readouterr().err == "error: --run: 'not-a-run' is not an MLflow run id (32 hex digits)\n"


def test_hub_task_offline_fails_with_one_line_naming_task_and_network(checkpoint, capsys, monkeypatch):
    import training.data.sources
    from training.evaluate import main

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(training.data.sources, "hub_unreachable", lambda timeout=5.0: "huggingface.co:443: unreachable")
    assert main(["--checkpoint", str(checkpoint), "--tasks", "verdict_choice,arc_easy", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: task arc_easy: its data is on the Hugging Face Hub, "
                                                   "which this machine cannot reach (network: huggingface.co:443")


def test_dry_run_shows_the_eval_plan(tmp_path, monkeypatch, capsys, data_dir):
    import runner

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny_eval.yaml"
    path.write_text(yaml.safe_dump(TINY_EVAL, sort_keys=False))
    assert runner.main([str(path), "--dry-run"]) == 0
    assert ("downstream (lm-eval): verdict_lambada, verdict_choice at step 0, every 1,024 tokens and at the end; "
            "at most 6 documents per task, batch 8") in capsys.readouterr().out


def test_accuracy_table_means_over_seeds_with_t_intervals():
    import pandas as pd
    from scipy import stats

    from analysis.accuracy import accuracy_table, eval_tasks, format_accuracy_table

    rows = []
    values = {("gpt", 0): 0.50, ("gpt", 1): 0.60, ("gpt", 2): 0.70, ("ngpt", 0): 0.80}
    for (arm, seed), final in values.items():
        run = f"{arm}{seed}"
        for step, tokens, acc in [(0, 0.0, 0.25), (4, 1024.0, final)]:
            rows += [dict(run_id=run, arm=arm, seed=seed, budget=1024, context_length=32, step=step, tokens=tokens,
                          metric=eval_metric("task_a", "acc"), value=acc),
                     dict(run_id=run, arm=arm, seed=seed, budget=1024, context_length=32, step=step, tokens=tokens,
                          metric=eval_metric("task_a", "acc_stderr"), value=0.05),
                     dict(run_id=run, arm=arm, seed=seed, budget=1024, context_length=32, step=step, tokens=tokens,
                          metric=eval_metric("task_b", "perplexity"), value=10.0 - step)]
    frame = pd.DataFrame(rows)
    assert eval_tasks(frame) == {"task_a": "acc", "task_b": "perplexity"}  # acc first; else the first metric
    table = accuracy_table(frame, ["gpt", "ngpt"])
    gpt = table[(table.task == "task_a") & (table.arm == "gpt")].iloc[0]
    half = stats.t.ppf(0.975, 2) * 0.1 / 3 ** 0.5  # sd of 0.5, 0.6, 0.7 is 0.1
    assert gpt["mean"] == pytest.approx(0.6) and gpt["n_seeds"] == 3 and gpt["interval"] == "t over 3 seeds"
    assert gpt["ci_high"] - gpt["mean"] == pytest.approx(half)
    ngpt = table[(table.task == "task_a") & (table.arm == "ngpt")].iloc[0]
    assert ngpt["mean"] == 0.8 and ngpt["ci_high"] - 0.8 == pytest.approx(1.959964 * 0.05, rel=1e-5)
    avg = table[(table.task == "average") & (table.arm == "gpt")].iloc[0]
    assert avg["mean"] == pytest.approx((0.6 + 6.0) / 2)
    md = format_accuracy_table(table)
    assert "| task_a | acc | 0.600 ± 0.248 | 0.800 ± 0.098 |" in md and "t over 3 seeds" in md
