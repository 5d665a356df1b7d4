"""Sweeps: expansion into units, learning-rate selection, cooldown branches, and the report of both."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch

from analysis.sweeps import chosen_lrs, compare_methods, edge_warnings, select_lr
from analysis.tables import format_cooldown_table
from training import session, sweep
from training.data.corpus import load_splits
from training.distributed import DistInfo
from training.experiment import build_experiment
from training.schedule import lr_at
from training.trainer import train_arm as real_train_arm

from test_runner import MUON_ARMS

TINY = {
    "name": "tiny_sweep",
    "data": {"dataset": "verdict"},
    "model": {"n_layers": 1, "n_heads": 2, "n_embd": 32, "context_length": 16},
    "train": {"tokens": 1024, "micro_batch_size": 4, "eval_every_tokens": 128, "eval_tokens": 128},
    "optim": {"lr": 3e-3, "warmup_tokens": 128, "schedule": "wsd", "decay_fraction": 0.25},
    "arms": {"gpt": {"model": {"kind": "gpt"}}, "ngpt": {"model": {"kind": "ngpt"}, "optim": {"lr": 1e-2}}},
    "targets": [9.0],
    "tracking": {"log_models": False, "log_samples": False},
}


def config(seeds=(0,), **sweep_keys):
    raw = copy.deepcopy(TINY)
    raw["sweep"], raw["seeds"] = sweep_keys, list(seeds)
    return build_experiment(raw)


# ------------------------------------------------------------------------------------------ expansion

def test_without_sweep_one_unit_per_arm_and_seed_with_the_old_keys():
    raw = copy.deepcopy(TINY)
    raw["seeds"] = [0, 1]
    cfg = build_experiment(raw)
    units = sweep.main_units(cfg)
    assert [u.key for u in units] == ["gpt-seed0", "ngpt-seed0", "gpt-seed1", "ngpt-seed1"]
    assert sweep.search_units(cfg) == []
    assert all(u.arm.train.tokens == 1024 and u.method == "full" and u.branch_of is None for u in units)
    assert units[0].label == "gpt seed 0"
    assert cfg.arm_hash(units[0].arm, 0) == cfg.arm_hash(cfg.arms[0], 0)  # checkpoints of old runs still resume


def test_search_then_main_units():
    cfg = config(seeds=[0, 1, 2], budgets=[512, 256, 1024], lr={"gpt": [1e-3, 3e-3, 1e-2]}, lr_budget=512)
    search = sweep.search_units(cfg)
    assert [u.key for u in search] == ["gpt-lr0.001-t512-seed0", "gpt-lr0.003-t512-seed0", "gpt-lr0.01-t512-seed0"]
    assert {u.stage for u in search} == {"lr_search"} and {u.budget for u in search} == {512}
    main = sweep.main_units(cfg, {("gpt", None): 1e-2})
    assert len(main) == 3 * 2 * 3  # seeds x arms x budgets
    assert [u.key for u in main[:6]] == ["gpt-lr0.01-t256-seed0", "gpt-lr0.01-t512-seed0", "gpt-lr0.01-t1024-seed0",
                                         "ngpt-t256-seed0", "ngpt-t512-seed0", "ngpt-t1024-seed0"]
    assert main[1].key == search[2].key  # the chosen grid run is a main run: trained once
    assert all(u.lr == 1e-2 for u in main if u.arm.name == "gpt") and all(u.lr == 1e-2 for u in main[3:6])
    assert [u.arm.train.tokens for u in main[:3]] == [256, 512, 1024]
    assert cfg.arms[0].train.tokens == 1024 and cfg.arms[0].optim.lr == 3e-3  # the config is not changed


def test_search_per_budget_and_seeds():
    cfg = config(seeds=[0, 1], budgets=[256, 512], lr={"ngpt": [1e-2, 3e-2]}, lr_budget="each", lr_seeds=[1])
    assert [u.key for u in sweep.search_units(cfg)] == [
        "ngpt-lr0.01-t256-seed1", "ngpt-lr0.03-t256-seed1", "ngpt-lr0.01-t512-seed1", "ngpt-lr0.03-t512-seed1"]
    main = sweep.main_units(cfg, {("ngpt", 256): 3e-2, ("ngpt", 512): 1e-2})
    assert [(u.key, u.lr) for u in main if u.arm.name == "ngpt" and u.seed == 0] == [
        ("ngpt-lr0.03-t256-seed0", 3e-2), ("ngpt-lr0.01-t512-seed0", 1e-2)]
    cfg.seeds = [0]  # --seeds dropped the search seed: the first seed searches
    assert {u.seed for u in sweep.search_units(cfg)} == {0}


def test_cooldown_trunk_and_branches():
    cfg = config(budgets=[256, 512, 1024], method="both")
    main = [u for u in sweep.main_units(cfg) if u.arm.name == "gpt"]
    full, cool = main[:3], main[3:]
    assert [u.key for u in full] == ["gpt-t256-seed0", "gpt-t512-seed0", "gpt-t1024-seed0"]
    assert [u.key for u in cool] == ["gpt-t1024-wsd-seed0", "gpt-t256-wsd-seed0", "gpt-t512-wsd-seed0"]
    trunk, branches = cool[0], cool[1:]
    assert trunk.branch_of is None and trunk.method == "cooldown" and trunk.arm.optim.schedule == "wsd"
    assert [b.branch_of for b in branches] == [trunk.key, trunk.key]
    assert trunk.branch_steps == [b.branch_step for b in branches]
    for branch in branches:  # the trunk and the branch's own full schedule agree up to the branch step only
        tps, k = branch.arm.tokens_per_step(), branch.branch_step
        short, long = branch.arm.steps() * tps, trunk.arm.steps() * tps
        assert all(lr_at(s * tps, short, branch.arm.optim) == lr_at(s * tps, long, trunk.arm.optim) for s in range(k))
        assert (k == branch.arm.steps() - 1  # a branch trains at least its last step
                or lr_at(k * tps, short, branch.arm.optim) < lr_at(k * tps, long, trunk.arm.optim))
    # 512 tokens = 8 steps of 64; the decay's first step (tokens 384 = 75 %) still has the peak rate
    assert branches[0].branch_step == 3 and branches[1].branch_step == 7
    wide = config(budgets=[1024, 4096], method="cooldown")
    trunk, branch = [u for u in sweep.main_units(wide) if u.arm.name == "gpt"]
    assert branch.branch_step == 13  # 16 steps, decay from 768 tokens: steps 1..13 start below it


def test_cooldown_of_a_cosine_arm_is_wsd_and_universe_covers_every_choice():
    raw = copy.deepcopy(TINY)
    raw["optim"]["schedule"] = "cosine"
    raw["sweep"] = {"budgets": [512, 1024], "method": "both", "lr": {"gpt": [1e-3, 1e-2]}}
    cfg = build_experiment(raw)
    main = sweep.main_units(cfg, {("gpt", None): 1e-3})
    assert {u.arm.optim.schedule for u in main if u.method == "full"} == {"cosine"}
    assert {u.arm.optim.schedule for u in main if u.method == "cooldown"} == {"wsd"}
    everything = sweep.universe(cfg)
    for best in (1e-3, 1e-2):
        assert {u.key for u in sweep.main_units(cfg, {("gpt", None): best})} <= set(everything)
    assert {u.key for u in sweep.search_units(cfg)} <= set(everything)


# ------------------------------------------------------------------------------------------ selection

def test_select_lr_lowest_mean_diverged_ties_and_edges():
    rows = [
        # gpt: 3e-3 has the lowest mean over seeds although 1e-2 has the single best run
        *({"arm": "gpt", "budget": 512, "lr": 1e-3, "seed": s, "final_val_loss": v} for s, v in enumerate([5.0, 5.2])),
        *({"arm": "gpt", "budget": 512, "lr": 3e-3, "seed": s, "final_val_loss": v} for s, v in enumerate([4.5, 4.6])),
        *({"arm": "gpt", "budget": 512, "lr": 1e-2, "seed": s, "final_val_loss": v} for s, v in enumerate([4.0, 5.4])),
        # ngpt: the best mean (1e-1) diverged on one seed, so it is not chosen; 3e-2 is the grid's edge
        *({"arm": "ngpt", "budget": 512, "lr": 1e-2, "seed": s, "final_val_loss": v} for s, v in enumerate([4.8, 4.8])),
        *({"arm": "ngpt", "budget": 512, "lr": 3e-2, "seed": s, "final_val_loss": v} for s, v in enumerate([4.4, 4.4])),
        *({"arm": "ngpt", "budget": 512, "lr": 1e-1, "seed": s, "final_val_loss": v}
          for s, v in enumerate([3.0, math.nan])),
    ]
    table = select_lr(rows)
    assert chosen_lrs(table) == {("gpt", 512): 3e-3, ("ngpt", 512): 3e-2}
    row = table[(table["arm"] == "gpt") & (table["lr"] == 3e-3)].iloc[0]
    assert row["final_val_loss"] == pytest.approx(4.55) and row["n_seeds"] == 2 and not row["at_edge"]
    assert table[(table["arm"] == "ngpt") & (table["lr"] == 1e-1)].iloc[0]["n_failed"] == 1
    assert edge_warnings(table) == []  # 3e-2 is in the middle of ngpt's grid
    rows[-1]["final_val_loss"] = 3.0  # now 1e-1 finished everywhere: chosen, at the top of the grid
    table = select_lr(rows)
    assert chosen_lrs(table)[("ngpt", 512)] == 1e-1
    assert edge_warnings(table) and "largest of its grid" in edge_warnings(table)[0]
    tie = select_lr([{"arm": "a", "budget": 1, "lr": lr, "seed": 0, "final_val_loss": 4.0} for lr in (2e-3, 1e-3)])
    assert chosen_lrs(tie) == {("a", 1): 1e-3}  # ties go to the smaller rate
    everything_diverged = select_lr([{"arm": "a", "budget": 1, "lr": lr, "seed": 0, "final_val_loss": None}
                                     for lr in (1e-3, 2e-3)])
    assert chosen_lrs(everything_diverged) == {}


def test_compare_methods_difference():
    full = pd.DataFrame({"context_length": [16, 16], "target": [5.0, 5.0], "arm": ["gpt", "ngpt"],
                         "tokens_to_target": [1000.0, 400.0], "speedup": [1.0, 2.5], "final_val_loss": [4.0, 3.5],
                         "mode": ["budget"] * 2, "n_budgets": [3, 3]})
    cool = full.assign(tokens_to_target=[1100.0, 400.0], speedup=[1.0, 2.75])
    out = compare_methods(full, cool)
    assert out["difference"].tolist() == pytest.approx([0.1, 0.0])
    assert out["speedup_cooldown"].tolist() == [1.0, 2.75]
    # a censored gpt seed makes its tokens a lower bound: marked, and no difference of bounds
    bounded = compare_methods(full.assign(tokens_to_target_bound=["lower", ""], speedup_bound=["", "lower"]),
                              cool.assign(tokens_to_target_bound="", speedup_bound=""))
    assert math.isnan(bounded["difference"].iloc[0]) and bounded["difference"].iloc[1] == 0.0
    text = format_cooldown_table(bounded)
    assert "| \u2265 1.00k | 1.10k | -- |" in text and "| \u2265 2.50 | 2.75 |" in text


# ------------------------------------------------------------------------------------------ end to end

def _gpt_sweep(tmp_path, monkeypatch, uri: str):
    """One WSD arm (gpt) with an lr grid of 2, budgets 256 and 512 and both methods, run in `tmp_path`
    against `uri`: its config and splits."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    raw = copy.deepcopy(TINY)
    raw["arms"] = {"gpt": raw["arms"]["gpt"]}
    raw["sweep"] = {"budgets": [256, 512], "method": "both", "lr": {"gpt": [1e-3, 1e-2]}}
    cfg = build_experiment(raw)
    return cfg, load_splits(cfg.data, cfg.tokenizer, 16)


def test_a_rank_other_than_0_says_logs_and_writes_nothing(tmp_path, monkeypatch, capsys, one_thread):
    """Under torchrun every rank runs the session; ranks other than 0 get the null tracker: a sweep with an lr
    search and a cooldown branch trains there without printing, without touching the tracking store and
    without writing a checkpoint (rank 0 does all three)."""
    cfg, splits = _gpt_sweep(tmp_path, monkeypatch, f"sqlite:///{tmp_path}/mlflow.db")
    calls = []
    monkeypatch.setattr(session, "train_arm", lambda *a, **k: calls.append(k["desc"]) or real_train_arm(*a, **k))

    class NotRank0(DistInfo):  # one process (no process group to wait on) that acts as a rank other than 0
        is_main = False

    # what rank 0 would broadcast: its parent run's id (this rank has None), and its own lr choice
    monkeypatch.setattr(session, "broadcast_object", lambda obj, dist: "f" * 32 if obj is None else obj)
    assert session.run_experiment(cfg, splits, NotRank0(), progress=False, stop=session.StopFlag()) == 0
    assert calls == ["gpt-lr0.001-t256-seed0", "gpt-lr0.01-t256-seed0", "gpt-lr0.01-t512-seed0",
                     "gpt-lr0.01-t512-wsd-seed0", "gpt-lr0.01-t256-wsd-seed0"]  # every unit, as on rank 0
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, no checkpoints/


def _children(uri: str, experiment: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {r.info.run_name: r for r in runs if r.data.tags.get("datgpt.role") == "child"}


def _val_curve(uri: str, run_id: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, "val/loss"))


def test_sweep_end_to_end_with_cooldown_branches_and_resume(tmp_path, monkeypatch, one_thread):
    """An lr grid + budgets + both methods on a WSD arm: the branch is bitwise the full run of its
    budget; an interruption in the main stage resumes without retraining; the report compares them."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg, splits = _gpt_sweep(tmp_path, monkeypatch, uri)

    calls = []

    def interrupted_once(arm, seed, *args, **kwargs):  # SIGTERM during the 4th unit (the cooldown trunk)
        calls.append(kwargs["desc"])
        if len(calls) == 4 and kwargs["stop"] is not None:
            kwargs["stop"].signum = 15
        return real_train_arm(arm, seed, *args, **kwargs)

    monkeypatch.setattr(session, "train_arm", interrupted_once)
    monkeypatch.setattr(session, "log_report", lambda *a, **k: None)  # built once below
    stop = session.StopFlag()
    assert session.run_experiment(cfg, splits, DistInfo(), progress=False, stop=stop) == 143
    assert calls == ["gpt-lr0.001-t256-seed0", "gpt-lr0.01-t256-seed0", "gpt-lr0.01-t512-seed0",
                     "gpt-lr0.01-t512-wsd-seed0"]
    calls.clear()
    assert session.run_experiment(cfg, splits, DistInfo(), progress=False, stop=session.StopFlag()) == 0
    assert calls == ["gpt-lr0.01-t512-wsd-seed0", "gpt-lr0.01-t256-wsd-seed0"]  # resumed trunk, then its branch

    runs = _children(uri, "tiny_sweep")
    assert sorted(runs) == ["gpt-lr0.001-t256-seed0", "gpt-lr0.01-t256-seed0", "gpt-lr0.01-t256-wsd-seed0",
                            "gpt-lr0.01-t512-seed0", "gpt-lr0.01-t512-wsd-seed0"]
    tags = {name: r.data.tags for name, r in runs.items()}
    assert tags["gpt-lr0.001-t256-seed0"]["datgpt.lr_selected"] == "false"
    assert tags["gpt-lr0.01-t256-seed0"]["datgpt.lr_selected"] == "true"
    assert tags["gpt-lr0.01-t256-wsd-seed0"]["datgpt.branch_of"] == runs["gpt-lr0.01-t512-wsd-seed0"].info.run_id
    assert tags["gpt-lr0.01-t256-wsd-seed0"]["datgpt.branch_step"] == "3"
    assert {t["datgpt.budget_method"] for n, t in tags.items() if "wsd" in n} == {"cooldown"}
    # same data order and learning rates: the cooldown branch is the full WSD run, step for step
    branch = _val_curve(uri, runs["gpt-lr0.01-t256-wsd-seed0"].info.run_id)
    assert branch == _val_curve(uri, runs["gpt-lr0.01-t256-seed0"].info.run_id) and len(branch) == 3
    assert (_val_curve(uri, runs["gpt-lr0.01-t512-wsd-seed0"].info.run_id)
            == _val_curve(uri, runs["gpt-lr0.01-t512-seed0"].info.run_id))
    parent = next(iter({t["mlflow.parentRunId"] for t in tags.values()}))
    folder = tmp_path / "checkpoints" / "tiny_sweep" / parent
    assert not list(folder.glob("*/branch_*.pt"))  # deleted once their branch finished
    final = torch.load(next((folder / "gpt-lr0.01-t512-wsd-seed0").glob("step_*.pt")), weights_only=True)
    assert final["finished"] and "optimizer" not in final and "model" in final  # nothing resumes a finished run
    from mlflow import MlflowClient

    parent_tags = MlflowClient(uri).get_run(parent).data.tags
    assert parent_tags["datgpt.best_lr.gpt"] == "0.01"
    assert parent_tags["datgpt.precision"] == "same for all arms: cpu/fp32/float32 weights"

    from analysis.report import build_report

    report = build_report("tiny_sweep", tmp_path / "figures", tracking_uri=uri)
    assert chosen_lrs(report.lr_search) == {("gpt", 256): 1e-2}
    assert set(report.data.runs["run_name"]) == {"gpt-lr0.01-t256-seed0", "gpt-lr0.01-t512-seed0"}
    assert report.cooldown_vs_full is not None
    finals = report.cooldown_vs_full[["final_val_loss_full", "final_val_loss_cooldown"]].to_numpy()
    assert (finals[:, 0] == finals[:, 1]).all()
    names = {p.name for p in report.files}
    assert {"lr_search.csv", "lr_search.md", "lr_search.png", "cooldown_vs_full.csv", "cooldown_vs_full.png"} <= names
    assert torch.get_num_threads() == 1


def test_a_muon_arms_cooldown_branch_is_its_full_run(tmp_path, monkeypatch, one_thread):
    """The branch path with Muon: the WSD branch loads the trunk's Muon and AdamW state and is bitwise the full
    run of its budget; each child run logs the optimizer and both rates."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(session, "log_report", lambda *a, **k: None)  # the report is tested above
    raw = copy.deepcopy(TINY)
    raw["arms"] = copy.deepcopy(MUON_ARMS)
    raw["sweep"] = {"budgets": [256, 512], "method": "both"}
    cfg = build_experiment(raw)
    assert session.run_experiment(cfg, load_splits(cfg.data, cfg.tokenizer, 16), DistInfo(), progress=False,
                                  stop=session.StopFlag()) == 0
    runs = _children(uri, "tiny_sweep")
    assert sorted(runs) == ["gpt_muon-t256-seed0", "gpt_muon-t256-wsd-seed0", "gpt_muon-t512-seed0",
                            "gpt_muon-t512-wsd-seed0"]
    branch = runs["gpt_muon-t256-wsd-seed0"]
    assert branch.data.tags["datgpt.branch_of"] == runs["gpt_muon-t512-wsd-seed0"].info.run_id
    curve = _val_curve(uri, branch.info.run_id)
    assert curve == _val_curve(uri, runs["gpt_muon-t256-seed0"].info.run_id) and len(curve) == 3
    for run in runs.values():
        params = run.data.params
        assert (params["optim.name"], params["optim.lr"], params["optim.adamw_lr"]) == ("muon", "0.01", "0.003")
