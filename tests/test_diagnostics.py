"""Hypersphere diagnostics (training.model_diagnostics) and their figures (analysis.diagnostics)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from analysis import record
from analysis.diagnostics import diagnostics_figures, fig_ngpt_scalars, load_diagnostics
from analysis.errors import AnalysisWarning
from analysis.style import NotApplicable
from models import ModelConfig, build_model
from training.model_diagnostics import MATRICES, Diagnostics, compute_diagnostics, condition_number

N_LAYERS, N_HEADS, D, HIDDEN, VOCAB, T = 2, 2, 32, 64, 48, 16


def tiny(kind: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, vocab_size=VOCAB, n_layers=N_LAYERS, n_heads=N_HEADS, n_embd=D,
                      context_length=T, mlp_hidden=HIDDEN, **overrides)
    return build_model(cfg)


@pytest.fixture
def idx() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def layer_values(diag: Diagnostics, prefix: str, suffix: str = "") -> list[float]:
    return [diag.scalars[f"{prefix}/layer_{i:02d}{suffix}"] for i in range(N_LAYERS)]


# ------------------------------------------------------------------------------------ nGPT


def test_fresh_ngpt_is_on_the_sphere(idx):
    diag = compute_diagnostics(tiny("ngpt"), idx)
    for name in MATRICES:
        for mean in layer_values(diag, f"diag/weight_norm/{name}", "/mean"):
            assert mean == pytest.approx(1.0, abs=1e-5), name
        for std in layer_values(diag, f"diag/weight_norm/{name}", "/std"):
            assert std < 1e-5, name
    for io in ("embed", "lm_head"):
        assert diag.scalars[f"diag/weight_norm/{io}/mean"] == pytest.approx(1.0, abs=1e-5)
    hidden = diag.distributions["hidden_norm"]
    assert hidden["layers"] == ["embed", "layer_00", "layer_01"]
    assert len(hidden["mean"]) == N_LAYERS + 1
    for label, mean, std in zip(hidden["layers"], hidden["mean"], hidden["std"]):
        assert mean == pytest.approx(1.0, abs=1e-4), label
        assert std < 1e-4, label
        assert diag.scalars[f"diag/hidden_norm/{label}/mean"] == mean


def test_ngpt_scalar_distributions_are_the_effective_values(idx):
    model = tiny("ngpt")
    with torch.no_grad():  # move them away from their (uniform) init so the test can tell layers apart
        for p in model.parameters():
            if p.ndim == 1:
                p.mul_(1.0 + 0.5 * torch.rand(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    eff = model.effective_scalars()
    diag = compute_diagnostics(model, idx)
    d = diag.distributions
    pairs = {"alpha_A": "alpha_attn", "alpha_M": "alpha_mlp", "s_qk": "s_qk", "s_u": "s_u", "s_v": "s_v"}
    for name, key in pairs.items():
        expected = eff[key].reshape(N_LAYERS, -1)
        assert torch.equal(torch.tensor(d[name], dtype=torch.float32), expected), name
        for i in range(N_LAYERS):
            row = expected[i].double()
            prefix = f"diag/ngpt/{name}/layer_{i:02d}"
            assert diag.scalars[f"{prefix}/mean"] == pytest.approx(row.mean().item(), rel=1e-5)
            assert diag.scalars[f"{prefix}/std"] == pytest.approx(row.std(correction=0).item(), rel=1e-4)
            assert diag.scalars[f"{prefix}/min"] == pytest.approx(row.min().item(), rel=1e-6)
            assert diag.scalars[f"{prefix}/max"] == pytest.approx(row.max().item(), rel=1e-6)
    assert len(d["s_qk"][0]) == D and len(d["s_u"][0]) == HIDDEN
    assert torch.equal(torch.tensor(d["s_z"], dtype=torch.float32), eff["s_z"])
    assert diag.scalars["diag/ngpt/s_z/max"] == pytest.approx(eff["s_z"].max().item(), rel=1e-6)
    # an untouched nGPT: alpha_A is its init 0.05 everywhere
    fresh = compute_diagnostics(tiny("ngpt"), idx, condition_numbers=False)
    assert fresh.scalars["diag/ngpt/alpha_A/layer_01/mean"] == pytest.approx(0.05, rel=1e-6)
    assert "cond" not in fresh.distributions and not any(k.startswith("diag/cond") for k in fresh.scalars)


# ------------------------------------------------------------------------------------ GPT


def test_gpt_weight_norms_scale_with_the_weights(idx):
    model = tiny("gpt")
    before = compute_diagnostics(model, idx)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
    after = compute_diagnostics(model, idx)
    names = [k for k in before.scalars if k.startswith("diag/weight_norm/")]
    assert len(names) == 2 * (len(MATRICES) * N_LAYERS + 2)
    for k in names:
        assert after.scalars[k] == pytest.approx(3.0 * before.scalars[k], rel=1e-5), k
    # condition numbers do not change under scaling; GPT has no nGPT keys
    for k in before.scalars:
        if k.startswith("diag/cond"):
            assert after.scalars[k] == pytest.approx(before.scalars[k], rel=1e-3), k  # x3 rounds in fp32
    assert not any(k.startswith("diag/ngpt/") for k in before.scalars)
    assert "alpha_A" not in before.distributions
    # the embedding output norm is the embedding row norm (~ init_std * sqrt(d)), scaled by 3 too
    assert after.scalars["diag/hidden_norm/embed/mean"] == pytest.approx(
        3.0 * before.scalars["diag/hidden_norm/embed/mean"], rel=1e-5)


def test_condition_number_of_a_known_matrix(idx):
    model = tiny("gpt", qk_norm=True)
    values = torch.arange(1, D + 1, dtype=torch.float32)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[:D] = torch.diag(values)  # W_q of layer 0 = diag(1..d)
        model.blocks[1].attn.proj.weight.copy_(torch.diag(values.flip(0) * 0.5))  # W_o of layer 1
    diag = compute_diagnostics(model, idx)
    assert diag.scalars["diag/cond/attn_q/layer_00"] == pytest.approx(float(D), rel=1e-9)
    assert diag.scalars["diag/cond/attn_o/layer_01"] == pytest.approx(float(D), rel=1e-9)
    # per head: head h owns rows h*d_h..(h+1)*d_h of W_q -> singular values h*d_h+1 .. (h+1)*d_h
    d_h = D // N_HEADS
    heads = diag.distributions["cond_heads"]["attn_q"][0]
    assert heads == pytest.approx([((h + 1) * d_h) / (h * d_h + 1) for h in range(N_HEADS)], rel=1e-9)
    assert diag.scalars["diag/cond_heads/attn_q/layer_00"] == pytest.approx(sum(heads) / 2, rel=1e-9)  # median
    # W_o columns of head h (a d x d_h slice of a diagonal) have singular values (d - h*d_h - j) / 2
    heads_o = diag.distributions["cond_heads"]["attn_o"][1]
    expected_o = [(D - h * d_h) / (D - (h + 1) * d_h + 1) for h in range(N_HEADS)]
    assert heads_o == pytest.approx(expected_o, rel=1e-9)
    # a rectangular matrix and a singular one (finite cap instead of inf)
    assert condition_number(torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]])) == pytest.approx(6.0)
    singular = condition_number(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert math.isfinite(singular) and singular > 1e7


def test_gelu_gpt_has_no_gate_matrix(idx):
    diag = compute_diagnostics(tiny("gpt", mlp="gelu", tied_embeddings=True), idx)
    assert diag.distributions["matrices"] == ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"]
    assert "diag/weight_norm/lm_head/mean" not in diag.scalars  # tied: the same matrix as embed
    assert "diag/cond/mlp_up/layer_01" in diag.scalars


# ------------------------------------------------------------------------------------ side effects, JSON


@pytest.mark.parametrize("kind", ["gpt", "ngpt"])
def test_no_side_effects(kind, idx):
    model = tiny(kind)
    model.train()
    model.blocks[1].eval()  # a mixed state must come back exactly
    params = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    grads_before = [p.grad for p in model.parameters()]
    compute_diagnostics(model, idx)
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training and model.blocks[0].training and not model.blocks[1].training
    assert not model.blocks[1].attn.training
    assert [p.grad for p in model.parameters()] == grads_before
    assert not model.blocks[0]._forward_hooks and not model.wte._forward_hooks
    # a wrapper (as DDP / torch.compile hold the model) is looked through; its mode is restored too
    wrapper = torch.nn.Module()
    wrapper.module = model
    assert compute_diagnostics(wrapper, idx, condition_numbers=False).distributions["kind"] == kind
    assert wrapper.training
    with pytest.raises(TypeError):
        compute_diagnostics(torch.nn.Linear(2, 2), idx)


def test_json_round_trip(idx, tmp_path):
    diag = compute_diagnostics(tiny("ngpt"), idx)
    text = diag.to_json()
    back = Diagnostics.from_json(text)
    assert back == diag
    assert all(isinstance(v, float) for v in back.scalars.values())
    assert all(all(c.isalnum() or c in "_./-" for c in name) for name in diag.scalars)
    path = tmp_path / "final.json"
    path.write_text(text)
    assert load_diagnostics(path) == diag.distributions
    json.dumps(diag.distributions, allow_nan=False)  # plain finite JSON data


def test_summary_metrics_follow_the_per_layer_values(idx):
    """The few metrics logged per evaluation are read off the per-layer table (and nothing else is)."""
    model = tiny("ngpt")
    with torch.no_grad():  # move the eigen learning rates off their uniform init, layers apart
        for i, block in enumerate(model.blocks):
            for p in (block.alpha_attn.weight, block.alpha_mlp.weight):
                p.mul_(1.0 + i + torch.rand(p.shape, generator=torch.Generator().manual_seed(i)))
    ngpt = compute_diagnostics(model, idx)
    s = ngpt.scalars
    summary = ngpt.summary()
    assert set(summary) == set(record.DIAG_SUMMARY)
    assert all("/" not in name for name in summary)  # MLflow charts them after the losses ("Model metrics")
    assert summary[record.DIAG_HIDDEN_NORM_LAST] == s["diag/hidden_norm/layer_01/mean"]
    assert summary[record.DIAG_HIDDEN_NORM_LAST] == pytest.approx(1.0, abs=1e-4)  # on the sphere
    assert summary[record.DIAG_WEIGHT_NORM_MEAN] == pytest.approx(1.0, abs=1e-5)
    conds = [s[f"diag/cond/{m}/layer_{i:02d}"] for m in MATRICES for i in range(N_LAYERS)]
    assert summary[record.DIAG_COND_MAX] == max(conds) and max(conds) > 1.0
    for name, key in (("alpha_A", record.DIAG_ALPHA_A_MEAN), ("alpha_M", record.DIAG_ALPHA_M_MEAN)):
        means = layer_values(ngpt, f"diag/ngpt/{name}", "/mean")
        assert means[1] > means[0] * 1.5  # the layers differ, so a wrong average would show
        assert summary[key] == pytest.approx(sum(means) / len(means), rel=1e-6)

    gpt = compute_diagnostics(tiny("gpt"), idx, condition_numbers=False)
    summary = gpt.summary()
    assert set(summary) == {record.DIAG_HIDDEN_NORM_LAST, record.DIAG_WEIGHT_NORM_MEAN}  # no cond, no alphas
    rows = [gpt.scalars[f"diag/weight_norm/{m}/layer_{i:02d}/mean"] for m in MATRICES for i in range(N_LAYERS)]
    assert max(rows) > 1.2 * min(rows)  # the matrices differ, so a wrong average would show
    assert summary[record.DIAG_WEIGHT_NORM_MEAN] == pytest.approx(sum(rows) / len(rows), rel=1e-12)
    assert summary[record.DIAG_WEIGHT_NORM_MEAN] < 0.5  # init rows of norm ~0.02 x sqrt(d): off the sphere


def test_table_json_holds_every_per_layer_value(idx):
    diag = compute_diagnostics(tiny("gpt"), idx)
    table = json.loads(diag.table_json(step=16, tokens=4096))
    assert table == {"format_version": 1, "step": 16, "tokens": 4096, "scalars": diag.scalars}
    assert len(table["scalars"]) == 27 * N_LAYERS + 6  # GPT with SwiGLU, untied embeddings


# ------------------------------------------------------------------------------------ figures


def test_figures_for_a_gpt_ngpt_pair(idx, tmp_path):
    dists = {"gpt": compute_diagnostics(tiny("gpt"), idx).distributions,
             "ngpt": compute_diagnostics(tiny("ngpt"), idx).distributions}
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnalysisWarning)
        files = diagnostics_figures(dists, tmp_path / "pair")
    stems = {f.stem for f in files}
    assert stems == {"diag_ngpt_scalars", "diag_condition_numbers", "diag_condition_numbers_heads",
                     "diag_norms"}
    assert {f.suffix for f in files} == {".png", ".pdf"} and len(files) == 8
    for f in files:
        assert f.is_file() and f.stat().st_size > 1000, f

    with pytest.raises(NotApplicable):
        fig_ngpt_scalars({"gpt": dists["gpt"]})
    assert diagnostics_figures({}, tmp_path) == []


def test_figures_skip_ngpt_scalars_for_gpt_only(idx, tmp_path, monkeypatch):
    dists = {"gpt": compute_diagnostics(tiny("gpt"), idx).distributions}
    saved: list[str] = []  # record instead of rendering (rendering is covered above and is slow)
    monkeypatch.setattr("analysis.diagnostics.save_figure",
                        lambda fig, out_dir, stem: saved.append(stem) or [out_dir / f"{stem}.png"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnalysisWarning)
        files = diagnostics_figures(dists, tmp_path)
    assert saved == ["diag_condition_numbers", "diag_condition_numbers_heads", "diag_norms"]
    assert [f.stem for f in files] == saved
