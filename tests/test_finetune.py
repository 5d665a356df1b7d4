"""Fine-tuning from a checkpoint (`arms.X.init_from`): resolution, lineage, and bad specs."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import runner
from models import ModelConfig, build_model
from training import session
from training.config import DataConfig, arm_to_dict
from training.data.corpus import load_splits, val_windows
from training.distributed import DistInfo
from training.experiment import build_experiment, load_experiment
from training.pretrained import PretrainedError, check_model, resolve
from training.session import run_experiment

# the first 998 lines of Tiny Shakespeare: not the built-in corpus's file (its SHA-256 differs), so a data.path
SHAKESPEARE = Path(__file__).resolve().parent / "fixtures" / "tinyshakespeare" / "input.txt"

MODEL = {"n_layers": 2, "n_heads": 2, "n_embd": 32, "context_length": 32}
PRETRAIN = {
    "name": "tiny_pre",
    "data": {"dataset": "verdict"},
    "model": MODEL,
    "train": {"tokens": 1024, "micro_batch_size": 4, "eval_every_tokens": 512, "eval_tokens": 256},
    "optim": {"lr": 3e-3},
    "arms": {"gpt": {"model": {"kind": "gpt"}},
             "ngpt": {"model": {"kind": "ngpt"}, "optim": {"lr": 1e-2, "weight_decay": 0.0}}},
    "targets": [10.0],
    "tracking": {"log_models": False, "log_samples": False},
}


def finetune_raw(gpt_init: str, ngpt_init: str) -> dict:
    raw = copy.deepcopy(PRETRAIN)
    raw.update(name="tiny_ft", data={"path": str(SHAKESPEARE)}, tracking={})
    raw["train"] = {"tokens": 768, "micro_batch_size": 4, "eval_every_tokens": 256, "eval_tokens": 512}
    raw["arms"]["gpt"]["init_from"] = gpt_init
    raw["arms"]["ngpt"]["init_from"] = ngpt_init
    raw["arms"]["ngpt"]["model"]["context_length"] = 16  # allowed: RoPE has no weights
    return raw


def run_in(folder: Path, raw: dict) -> int:
    cfg = build_experiment(raw)
    splits = load_splits(cfg.data, cfg.tokenizer, max(a.model.context_length for a in cfg.arms))
    return run_experiment(cfg, splits, DistInfo(), progress=False)


def mlflow_children(uri: str, experiment: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {r.data.tags["datgpt.arm"]: r for r in runs if r.data.tags.get("datgpt.role") == "child"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The tiny pretraining, run once through the session (checkpoints and MLflow in a temp folder)."""
    folder = tmp_path_factory.mktemp("finetune")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setattr(session, "log_report", lambda *a, **k: None)  # figures are tested elsewhere
        assert run_in(folder, PRETRAIN) == 0
    children = mlflow_children(uri, "tiny_pre")
    return {"folder": folder, "uri": uri, "runs": {arm: run.info.run_id for arm, run in children.items()}}


@pytest.fixture
def in_folder(pretrained, monkeypatch):
    monkeypatch.chdir(pretrained["folder"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pretrained["uri"])
    monkeypatch.setattr(session, "log_report", lambda *a, **k: None)
    return pretrained


def independent_val_loss(checkpoint: Path, context_length: int, eval_tokens: int) -> float:
    """The checkpoint's model on Tiny Shakespeare's validation windows, computed here from scratch."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = build_model(ModelConfig(**{**state["model_config"], "context_length": context_length}))
    model.load_state_dict(state["model"])
    model.eval()
    splits = load_splits(DataConfig(path=str(SHAKESPEARE)), "gpt2", context_length)
    x, y = val_windows(splits.val, context_length, eval_tokens)
    with torch.no_grad():
        logits = model(x)[0]
    return F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()


def test_finetuned_arms_start_from_the_pretrained_weights_and_improve(in_folder, data_dir):
    from mlflow import MlflowClient

    pre_ngpt_run = in_folder["runs"]["ngpt"]
    # gpt: the newest finished checkpoint of tiny_pre's gpt arm; ngpt: the MLflow run id of tiny_pre's ngpt
    assert run_in(in_folder["folder"], finetune_raw("tiny_pre/gpt", pre_ngpt_run)) == 0

    client = MlflowClient(in_folder["uri"])
    pre = mlflow_children(in_folder["uri"], "tiny_pre")
    children = mlflow_children(in_folder["uri"], "tiny_ft")
    for arm, context_length in (("gpt", 32), ("ngpt", 16)):
        tags = children[arm].data.tags
        source = Path(tags["datgpt.init_from_checkpoint"])
        assert source == Path(pre[arm].data.tags["datgpt.checkpoint"])  # the pretraining's final checkpoint
        assert tags["datgpt.init_from"] == ("tiny_pre/gpt" if arm == "gpt" else pre_ngpt_run)
        assert tags["datgpt.init_from_run_id"] == pre[arm].info.run_id
        assert tags["datgpt.init_from_parent_run_id"] == pre[arm].data.tags["mlflow.parentRunId"]
        assert (tags["datgpt.init_from_step"], tags["datgpt.init_from_tokens"]) == ("8", "1024")
        assert children[arm].data.params["init_from"] == tags["datgpt.init_from"]

        val = {m.step: m.value for m in client.get_metric_history(children[arm].info.run_id, "val/loss")}
        expected = independent_val_loss(source, context_length, eval_tokens=512)
        assert val[0] == pytest.approx(expected, rel=1e-5, abs=1e-5), arm  # step 0 = the pretrained model
        assert val[max(val)] < val[0] - 0.05, (arm, val)  # and fine-tuning lowers it

        # the end of the run: samples, the model in MLflow, and a checkpoint tag for the next fine-tuning
        artifacts = {a.path for a in client.list_artifacts(children[arm].info.run_id, "samples")}
        assert artifacts == {"samples/samples.txt"}
        text = client.download_artifacts(children[arm].info.run_id, "samples/samples.txt")
        assert "## prompt 1: 'I had always thought' (seed 0)" in Path(text).read_text()
        assert children[arm].outputs.model_outputs, "a model logged to the run"
        assert Path(children[arm].data.tags["datgpt.checkpoint"]).is_file()


def test_a_muon_arm_fine_tunes_from_an_adamw_checkpoint(in_folder, data_dir):
    """init_from with Muon: the pretrained GPT's weights (trained by AdamW), a fresh Muon + AdamW."""
    from mlflow import MlflowClient

    raw = finetune_raw("tiny_pre/gpt", in_folder["runs"]["ngpt"])
    raw.update(name="tiny_ft_muon", tracking={"log_models": False, "log_samples": False})
    raw["arms"] = {"gpt_muon": {"model": {"kind": "gpt"}, "init_from": "tiny_pre/gpt",
                                "optim": {"name": "muon", "lr": 1e-2, "adamw_lr": 3e-3}}}
    assert run_in(in_folder["folder"], raw) == 0
    child = mlflow_children(in_folder["uri"], "tiny_ft_muon")["gpt_muon"]
    assert child.data.params["optim.name"] == "muon"
    val = {m.step: m.value for m in MlflowClient(in_folder["uri"]).get_metric_history(child.info.run_id, "val/loss")}
    source = Path(child.data.tags["datgpt.init_from_checkpoint"])
    assert val[0] == pytest.approx(independent_val_loss(source, 32, eval_tokens=512), rel=1e-5, abs=1e-5)
    assert val[max(val)] < val[0] - 0.05, val


def test_init_from_is_in_the_arm_dict_and_hash_only_when_set():
    """Arms without init_from keep the dict, params and hash they had before the key existed."""
    cfg = build_experiment(copy.deepcopy(PRETRAIN))
    assert "init_from" not in arm_to_dict(cfg.arms[0])
    a, c = build_experiment(finetune_raw("a/gpt", "b/ngpt")), build_experiment(finetune_raw("c/gpt", "b/ngpt"))
    assert arm_to_dict(a.arms[0])["init_from"] == "a/gpt"
    assert a.arm_hash(a.arms[0], 0) != c.arm_hash(c.arms[0], 0)  # resuming under another init is refused
    assert a.arm_hash(a.arms[1], 0) == c.arm_hash(c.arms[1], 0)


def test_resolve_forms_and_model_checks(in_folder):
    gpt_folder = next(Path("checkpoints/tiny_pre").glob("*/gpt-seed0"))
    newest = sorted(gpt_folder.glob("step_*.pt"))[-1]
    by_form = [resolve(str(newest), "checkpoints"), resolve(str(gpt_folder), "checkpoints"),
               resolve(str(gpt_folder.parent), "checkpoints", "gpt", 0), resolve("tiny_pre/gpt", "checkpoints", seed=0),
               resolve("tiny_pre/gpt-seed0", "checkpoints", seed=5), resolve(in_folder["runs"]["gpt"], "checkpoints")]
    assert {p.path for p in by_form} == {newest.resolve()}
    assert all(p.step == 8 and p.finished and p.arm == "gpt" for p in by_form)
    # the run id also resolves through the run's datgpt.checkpoint tag when checkpoint.dir is elsewhere
    assert resolve(in_folder["runs"]["gpt"], "elsewhere").path == newest.resolve()

    cfg = build_experiment(copy.deepcopy(PRETRAIN))
    check_model(by_form[0], cfg.arms[0].model)  # the same model: fine
    with pytest.raises(PretrainedError, match=r"holds another model \(checkpoint vs this arm: kind 'gpt' vs 'ngpt'"):
        check_model(by_form[0], cfg.arms[1].model)
    wider = dataclasses.replace(cfg.arms[0].model, n_embd=64)
    with pytest.raises(PretrainedError, match="n_embd 32 vs 64"):
        check_model(by_form[0], wider)
    legacy = dataclasses.replace(by_form[0], model_config=None)  # a checkpoint from before model_config
    with pytest.raises(PretrainedError, match=r"another model \(wte.weight is \[50304, 32\], this arm needs "
                                              r"\[50304, 64\]\)"):
        check_model(legacy, wider)
    with pytest.raises(PretrainedError, match="say which seed"):
        resolve("tiny_pre/gpt", "checkpoints")


@pytest.mark.parametrize("change,message", [
    ({"gpt_init": "missing/step_00000001.pt"},
     "arms.gpt.init_from: missing/step_00000001.pt: no such file or folder, and not EXPERIMENT/ARM"),
    ({"gpt_init": "tiny_pre/gpt-seed3"}, "arms.gpt.init_from: tiny_pre/gpt-seed3: no finished checkpoint of arm "
                                         "'gpt' seed 3 under checkpoints/tiny_pre/*/gpt-seed3/"),
    ({"gpt_init": "nope/gpt"}, "arms.gpt.init_from: nope/gpt: no checkpoints of experiment 'nope'"),
    ({"gpt_init": "tiny_pre/ngpt"}, "arms.gpt.init_from: "),  # an nGPT checkpoint for a GPT arm
    ({"ngpt_width": 64}, "arms.ngpt.init_from: "),
    ({"ngpt_init": "0123456789abcdef0123456789abcdef"},
     "arms.ngpt.init_from: 0123456789abcdef0123456789abcdef: no checkpoint of this MLflow run"),
])
def test_bad_init_from_is_one_line_exit_2_before_anything_is_logged(in_folder, tmp_path, capsys, change, message):
    raw = finetune_raw(change.get("gpt_init", "tiny_pre/gpt"), change.get("ngpt_init", "tiny_pre/ngpt"))
    raw["name"] = "tiny_bad"
    if "ngpt_width" in change:
        raw["arms"]["ngpt"]["model"]["n_embd"] = change["ngpt_width"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_experiment(path).arms[0].init_from  # the YAML loads: specs resolve only at run time
    assert runner.main([str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    if message.endswith(": "):
        assert "holds another model" in err
    from mlflow import MlflowClient

    assert MlflowClient(in_folder["uri"]).get_experiment_by_name("tiny_bad") is None  # nothing logged


def test_an_arm_that_resumes_does_not_resolve_its_init_from_again(tmp_path):
    """A fine-tuning run interrupted after its first checkpoint continues from that checkpoint: its
    init_from is not looked up again (the pretrained file may be gone by then)."""
    from training.checkpoint import Invocation
    from training.errors import UsageError
    from training.resume import resolve_init_from

    cfg = build_experiment(finetune_raw(str(tmp_path / "gone.pt"), str(tmp_path / "gone.pt")))
    invocation = Invocation(tmp_path / "tiny_ft" / "parent", "parent", "hash")
    (invocation.arm_folder("gpt", 0)).mkdir(parents=True)
    (invocation.arm_folder("gpt", 0) / "step_00000002.pt").write_bytes(b"")
    with pytest.raises(UsageError, match=r"^arms\.ngpt\.init_from: .*gone\.pt: no such file"):
        resolve_init_from(cfg, invocation)  # gpt resumes and is skipped; ngpt starts fresh and needs it
    cfg.arms = cfg.arms[:1]
    assert resolve_init_from(cfg, invocation) == {}
