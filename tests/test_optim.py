"""training/optim.py: Muon's step against the formula, torch.optim.Muon, the parameter split, the `optim` keys.

The resume, gloo, cooldown-branch and fine-tuning paths with Muon are tested next to AdamW's, in
test_resume.py, test_runner.py, test_sweep.py and test_finetune.py."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json

import pytest
import torch

import runner
from models import GPT, ModelConfig
from training.config import OptimConfig, arm_to_dict, flatten
from training.experiment import build_experiment
from training.optim import Muon, MuonWithAdamW, build_optimizer, set_lr

from test_runner import TINY, write_yaml

CPU = torch.device("cpu")
MUON = OptimConfig(name="muon", lr=0.02, adamw_lr=0.005, weight_decay=0.1)


def tiny_gpt(qk_norm: bool = True, mlp: str = "swiglu") -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(kind="gpt", vocab_size=64, n_layers=2, n_heads=2, n_embd=32, context_length=16,
                           qk_norm=qk_norm, mlp=mlp))


def backward(model: GPT, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, 64, (4, 16), generator=g) for _ in range(2))
    model(x, y)[1].backward()


def newton_schulz_reference(u: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Five quintic Newton-Schulz iterations X <- a X + (b A + c A^2) X, A = X X^T, from X = U / ||U||_F, on
    the wide orientation of U (Keller Jordan's Muon post), in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = u.shape[0] > u.shape[1]
    x = (u.T if tall else u).double()
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon_reference(w: torch.Tensor, u: torch.Tensor, parts: int, lr: float, wd: float) -> torch.Tensor:
    """W (1 - lr wd) - lr 0.2 sqrt(max(rows, cols)) NS(U_i), each of the `parts` row blocks U_i its own matrix."""
    rows, cols = w.shape[0] // parts, w.shape[1]
    ortho = torch.cat([newton_schulz_reference(block) for block in u.double().split(rows)])
    return w.double() * (1 - lr * wd) - lr * 0.2 * max(rows, cols) ** 0.5 * ortho


def test_two_muon_steps_match_newton_schulz_computed_from_the_formula():
    """Two steps of GPT + QK-norm (momentum and Nesterov need the second): every hidden matrix moves by
    Muon's formula, block by block, at the scheduled rate; every other parameter by AdamW's first step at
    its own rate (adamw_lr / lr of the scheduled one)."""
    model = tiny_gpt()
    opt = build_optimizer(model, MUON, CPU)
    mu, wd = MUON.muon_momentum, MUON.weight_decay
    hidden = model.hidden_matrices()
    hidden_ids = {id(p) for _, p, _ in hidden}
    buffers = {name: torch.zeros_like(p, dtype=torch.float64) for name, p, _ in hidden}
    for step, lr in ((1, 0.5 * MUON.lr), (2, MUON.lr)):  # half the peak: a step in warmup
        backward(model, seed=step)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        set_lr(opt, lr)
        opt.step()
        opt.zero_grad()
        assert [g["lr"] for g in opt.adamw.param_groups] == [lr * MUON.adamw_lr / MUON.lr] * 2
        for name, param, parts in hidden:
            buffers[name] = mu * buffers[name] + (1 - mu) * grads[name].double()
            nesterov = (1 - mu) * grads[name].double() + mu * buffers[name]
            expected = muon_reference(before[name], nesterov, parts, lr, wd)
            update = expected - before[name].double() * (1 - lr * wd)
            error = ((param.detach().double() - expected).norm() / update.norm()).item()
            assert error < 0.05, (name, step, error)  # bfloat16 iterations against float64 ones: ~0.02
        if step == 1:  # AdamW's first step: m_hat = g, v_hat = g^2
            lr_adamw = lr * MUON.adamw_lr / MUON.lr
            for name, param in model.named_parameters():
                if id(param) in hidden_ids:
                    continue
                decay = wd if param.ndim == 2 else 0.0
                g = grads[name]
                expected = before[name] * (1 - lr_adamw * decay) - lr_adamw * g / (g.abs() + MUON.eps)
                torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon arrived in torch 2.9")
@pytest.mark.parametrize("shape", [(96, 32), (32, 128), (48, 48)])
@pytest.mark.parametrize("nesterov,adjust", [(True, "match_rms_adamw"), (False, "original")])
def test_a_single_matrix_takes_torch_muons_step_bitwise(shape, nesterov, adjust):
    torch.manual_seed(0)
    theirs = torch.nn.Parameter(torch.randn(shape))
    ours = torch.nn.Parameter(theirs.detach().clone())
    mine = Muon([ours], lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr=adjust)
    reference = torch.optim.Muon([theirs], lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov,
                                 adjust_lr_fn=adjust)
    for _ in range(3):
        grad = torch.randn(shape)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("qk_norm,mlp", [(False, "swiglu"), (True, "swiglu"), (True, "gelu")])
def test_muon_trains_the_hidden_matrices_and_adamw_the_rest(qk_norm, mlp):
    model = tiny_gpt(qk_norm, mlp)
    opt = build_optimizer(model, MUON, CPU)
    assert isinstance(opt, MuonWithAdamW)
    name_of = {id(p): n for n, p in model.named_parameters()}
    muon = {name_of[id(p)]: g["parts"] for g in opt.muon.param_groups for p in g["params"]}
    fc_parts = 2 if mlp == "swiglu" else 1  # SwiGLU's fc is [W_u; W_v]
    assert muon == {f"blocks.{i}.{name}.weight": parts for i in range(2)
                    for name, parts in (("attn.qkv", 3), ("attn.proj", 1), ("mlp.fc", fc_parts), ("mlp.proj", 1))}
    decay, no_decay = ([name_of[id(p)] for p in g["params"]] for g in opt.adamw.param_groups)
    assert [g["weight_decay"] for g in opt.adamw.param_groups] == [0.1, 0.0]
    assert sorted(decay) == ["lm_head.weight", "wte.weight"]  # embeddings and head: AdamW, with decay
    vectors = ["norm_f.weight"] + [f"blocks.{i}.{n}.weight" for i in range(2) for n in ("norm_attn", "norm_mlp")]
    if qk_norm:
        vectors += [f"blocks.{i}.attn.{n}.weight" for i in range(2) for n in ("q_norm", "k_norm")]
    assert sorted(no_decay) == sorted(vectors)
    assert sorted([*muon, *decay, *no_decay]) == sorted(name_of.values())  # every parameter exactly once


def test_adamw_is_torchs_on_the_models_groups():
    model = tiny_gpt()
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.05, beta1=0.8), CPU)
    assert type(opt) is torch.optim.AdamW
    assert [(g["weight_decay"], g["betas"], g["lr"]) for g in opt.param_groups] == [(0.05, (0.8, 0.95), 1e-3),
                                                                                      (0.0, (0.8, 0.95), 1e-3)]
    set_lr(opt, 5e-4)
    assert [g["lr"] for g in opt.param_groups] == [5e-4, 5e-4]


def _cfg(**optim):
    raw = copy.deepcopy(TINY)
    raw["arms"] = {"gpt": {"model": {"kind": "gpt"}},
                   "gpt_muon": {"model": {"kind": "gpt", "qk_norm": True}, "optim": optim}}
    return build_experiment(raw)


def test_params_name_the_optimizer_and_both_rates_and_adamw_hashes_are_unchanged():
    cfg = _cfg(name="muon", lr=0.02, adamw_lr=3e-3)
    gpt, muon = (flatten(arm_to_dict(a)) for a in cfg.arms)
    assert (gpt["optim.name"], gpt["optim.lr"]) == ("adamw", 3e-3) and "optim.adamw_lr" not in gpt
    assert not [k for k in gpt if k.startswith("optim.muon_")]  # Muon's keys only where they apply
    assert (muon["optim.name"], muon["optim.lr"], muon["optim.adamw_lr"]) == ("muon", 0.02, 3e-3)
    assert (muon["optim.muon_momentum"], muon["optim.muon_nesterov"], muon["optim.muon_ns_steps"],
            muon["optim.muon_adjust_lr"]) == (0.95, True, 5, "match_rms_adamw")
    # an AdamW arm hashes as before optim.name and the Muon keys existed: its old checkpoints still resume
    arm = cfg.arms[0]
    old_optim = {k: v for k, v in dataclasses.asdict(arm.optim).items()
                 if k in ("lr", "weight_decay", "beta1", "beta2", "eps", "warmup_tokens", "schedule", "min_lr_ratio",
                          "decay_fraction")}
    old_arm = {"model": dataclasses.asdict(arm.model), "train": dataclasses.asdict(arm.train), "optim": old_optim}
    old = {"data": dataclasses.asdict(cfg.data), "tokenizer": cfg.tokenizer, "arm": old_arm, "seed": 0}
    old_hash = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert cfg.arm_hash(arm, 0) == old_hash
    other = _cfg(name="muon", lr=0.02, adamw_lr=1e-3)
    assert cfg.arm_hash(cfg.arms[1], 0) != other.arm_hash(other.arms[1], 0)  # the AdamW part's rate is hashed


MUON_BAD_INPUT = [
    (["--set", "optim.name=sgd"], "error: optim.name: must be one of adamw, muon; got 'sgd'"),
    (["--set", "optim.lr=-0.001"], "error: optim.lr: must be positive, got -0.001"),
    (["--set", "optim.name=muon"], "error: optim.adamw_lr: required with optim.name muon"),
    (["--set", "optim.name=muon", "--set", "optim.adamw_lr=-0.001"],
     "error: optim.adamw_lr: must be positive, got -0.001"),
    (["--set", "optim.name=muon", "--set", "optim.adamw_lr=0.001"],
     "error: optim.name: muon (arm ngpt) trains GPT models only, not ngpt"),
    (["--set", "optim.name=muon", "--set", "optim.adamw_lr=0.001", "--set", "optim.muon_momentum=1"],
     "error: optim.muon_momentum: must be in [0, 1), got 1.0"),
    (["--set", "optim.muon_adjust_lr=spectral"],
     "error: optim.muon_adjust_lr: must be one of match_rms_adamw, original; got 'spectral'"),
]


@pytest.mark.parametrize("args,message", MUON_BAD_INPUT)
def test_bad_optimizer_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message, data_dir):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    assert runner.main([str(write_yaml(tmp_path)), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "mlflow.db").exists()  # nothing logged
