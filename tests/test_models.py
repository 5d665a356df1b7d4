"""Tests of models/: the shared interface of GPT and nGPT, and nGPT's hypersphere constraints.

All CPU, tiny models. The float64 re-derivations below are written from the paper's equations with
plain tensor ops on the modules' raw parameters; they do not call the package's norm or rotary code.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from models import GPT, NGPT, ModelConfig, build_model
from models.layers import RotaryEmbedding
from models.ngpt import l2_normalize


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(kind: str = "gpt", **overrides) -> ModelConfig:
    base = dict(kind=kind, vocab_size=96, n_layers=2, n_heads=4, n_embd=32, context_length=16)
    base.update(overrides)
    return ModelConfig(**base)


def make(kind: str = "gpt", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(kind, **overrides))


VARIANTS = {
    "gpt": dict(kind="gpt"),
    "gpt_qknorm_gelu": dict(kind="gpt", qk_norm=True, mlp="gelu"),
    "gpt_tied": dict(kind="gpt", tied_embeddings=True),
    "ngpt": dict(kind="ngpt"),
    "ngpt_tied": dict(kind="ngpt", tied_embeddings=True),
}


def random_tokens(config: ModelConfig, batch: int = 2, length: int | None = None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length or config.context_length), generator=g)


def capture_block_outputs(model) -> tuple[list[torch.Tensor], list]:
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o.detach())) for b in model.blocks]
    return outputs, handles


# ---------------------------------------------------------------------------------------------
# Reference math (float64), written from the papers with plain tensor ops
# ---------------------------------------------------------------------------------------------
def ref_rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE on [B, T, H, D], pairing dims (i, i + D/2) with angle t * base^(-2i/D)."""
    T, D = x.shape[1], x.shape[-1]
    half = D // 2
    inv_freq = torch.tensor([base ** (-2.0 * i / D) for i in range(half)], dtype=torch.float64)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    c, s = torch.cos(angle)[None, :, None, :], torch.sin(angle)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def ref_causal_attention(q, k, v, scale: float) -> torch.Tensor:
    """softmax(scale * q k^T + causal mask) v on [B, T, H, D]; heads merged to [B, T, H*D]."""
    B, T, H, D = q.shape
    scores = torch.einsum("bthd,bshd->bhts", q, k) * scale
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return torch.einsum("bhts,bshd->bthd", weights, v).reshape(B, T, H * D)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True))


def effective(param: torch.Tensor, init: float, scale: float | None, d: int) -> torch.Tensor:
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    return param * (init / scale)


def ref_ngpt_block(h: torch.Tensor, block, cfg: ModelConfig) -> torch.Tensor:
    d, H = cfg.n_embd, cfg.n_heads
    D, hidden = d // H, cfg.mlp_hidden or 4 * d
    B, T, _ = h.shape
    # attention (Sec. 2.3.2)
    W = block.attn.qkv.weight
    q = (h @ W[:d].T).view(B, T, H, D)
    k = (h @ W[d : 2 * d].T).view(B, T, H, D)
    v = (h @ W[2 * d :].T).view(B, T, H, D)
    q, k = ref_rope(q, cfg.rope_base), ref_rope(k, cfg.rope_base)
    s_qk = effective(block.attn.s_qk.weight, cfg.s_qk_init, cfg.s_qk_scale, d).view(H, D)
    q, k = unit(q) * s_qk, unit(k) * s_qk
    h_a = unit(ref_causal_attention(q, k, v, math.sqrt(D)) @ block.attn.proj.weight.T)
    alpha_a = effective(block.alpha_attn.weight, cfg.alpha_attn_init, cfg.alpha_attn_scale, d)
    h = unit(h + alpha_a * (h_a - h))
    # MLP (Sec. 2.4.2)
    W = block.mlp.fc.weight
    u = (h @ W[:hidden].T) * effective(block.mlp.s_u.weight, cfg.s_u_init, cfg.s_u_scale, d)
    v = (h @ W[hidden:].T) * effective(block.mlp.s_v.weight, cfg.s_v_init, cfg.s_v_scale, d) * math.sqrt(d)
    h_m = unit((u * (v * torch.sigmoid(v))) @ block.mlp.proj.weight.T)
    alpha_m = effective(block.alpha_mlp.weight, cfg.alpha_mlp_init, cfg.alpha_mlp_scale, d)
    return unit(h + alpha_m * (h_m - h))


def ref_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def ref_gpt_block(h: torch.Tensor, block, cfg: ModelConfig) -> torch.Tensor:
    d, H = cfg.n_embd, cfg.n_heads
    D, hidden = d // H, cfg.mlp_hidden or 4 * d
    B, T, _ = h.shape
    x = ref_rms(h, block.norm_attn.weight, cfg.norm_eps)
    W = block.attn.qkv.weight
    q = (x @ W[:d].T).view(B, T, H, D)
    k = (x @ W[d : 2 * d].T).view(B, T, H, D)
    v = (x @ W[2 * d :].T).view(B, T, H, D)
    if cfg.qk_norm:
        q = ref_rms(q, block.attn.q_norm.weight, cfg.norm_eps)
        k = ref_rms(k, block.attn.k_norm.weight, cfg.norm_eps)
    q, k = ref_rope(q, cfg.rope_base), ref_rope(k, cfg.rope_base)
    h = h + ref_causal_attention(q, k, v, 1.0 / math.sqrt(D)) @ block.attn.proj.weight.T
    x = ref_rms(h, block.norm_mlp.weight, cfg.norm_eps)
    W = block.mlp.fc.weight
    if cfg.mlp == "swiglu":
        u, g = x @ W[:hidden].T, x @ W[hidden:].T
        a = u * (g * torch.sigmoid(g))
    else:
        z = x @ W.T
        a = 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))
    return h + a @ block.mlp.proj.weight.T


def perturb_vectors(model, seed: int = 3) -> None:
    """Move every 1-D parameter (norm weights, nGPT scale vectors) away from its constant init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.mul_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))


# ---------------------------------------------------------------------------------------------
# Exact math in float64
# ---------------------------------------------------------------------------------------------
def test_ngpt_matches_paper_equations_in_float64():
    cfg = tiny_config(
        "ngpt", mlp_hidden=48, alpha_attn_init=0.3, alpha_mlp_init=0.2, s_u_scale=0.5, s_z_scale=0.25, s_qk_init=1.5
    )
    torch.manual_seed(0)
    model = NGPT(cfg)
    perturb_vectors(model)
    model.double()
    idx = random_tokens(cfg)
    outputs, handles = capture_block_outputs(model)
    logits, _ = model(idx)
    for handle in handles:
        handle.remove()
    assert logits.dtype == torch.float64

    h = model.wte.weight[idx]  # h_0: embedding rows
    ref_h1 = ref_ngpt_block(h, model.blocks[0], cfg)
    assert (outputs[0] - ref_h1).abs().max().item() < 1e-10
    for block in model.blocks:
        h = ref_ngpt_block(h, block, cfg)
    z = (h @ model.lm_head.weight.T) * effective(model.s_z.weight, cfg.s_z_init, cfg.s_z_scale, cfg.n_embd)
    assert (logits - z).abs().max().item() < 1e-10
    assert z.abs().max().item() > 0.1  # the comparison is not between near-zero tensors


@pytest.mark.parametrize("variant", ["gpt", "gpt_qknorm_gelu"])
def test_gpt_matches_reference_in_float64(variant):
    cfg = tiny_config(**VARIANTS[variant])
    torch.manual_seed(0)
    model = GPT(cfg)
    perturb_vectors(model)
    model.double()
    idx = random_tokens(cfg)
    logits, _ = model(idx)
    h = model.wte.weight[idx]
    for block in model.blocks:
        h = ref_gpt_block(h, block, cfg)
    z = ref_rms(h, model.norm_f.weight, cfg.norm_eps) @ model.lm_head.weight.T
    assert (logits - z).abs().max().item() < 1e-10


def test_rotary_tables_are_non_persistent_and_exact_after_casts():
    rot = RotaryEmbedding(head_dim=8, max_len=16, base=10000.0)
    assert rot.state_dict() == {}
    assert rot.cos.dtype == torch.float32 and rot.cos.shape == (16, 4)
    rot.double()
    angle = torch.arange(16, dtype=torch.float64)[:, None] * torch.tensor(
        [10000.0 ** (-2.0 * i / 8) for i in range(4)], dtype=torch.float64
    )
    assert rot.cos.dtype == torch.float64
    assert (rot.cos - angle.cos()).abs().max().item() < 1e-15
    assert (rot.sin - angle.sin()).abs().max().item() < 1e-15


def test_meta_build_then_to_empty_gets_real_rotary_tables():
    with torch.device("meta"):
        model = build_model(tiny_config("ngpt"))
    assert model.rotary.cos.is_meta
    model.to_empty(device="cpu")
    fresh = make("ngpt")
    assert torch.equal(model.rotary.cos, fresh.rotary.cos)
    assert torch.equal(model.rotary.sin, fresh.rotary.sin)


# ---------------------------------------------------------------------------------------------
# The shared interface
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_contract(variant):
    model = make(**VARIANTS[variant])
    cfg = model.config
    idx = random_tokens(cfg, batch=3)
    targets = random_tokens(cfg, batch=3, seed=2)
    logits, loss = model(idx)
    assert loss is None
    assert logits.shape == (3, cfg.context_length, cfg.vocab_size) and logits.dtype == torch.float32
    logits2, loss = model(idx, targets)
    assert torch.equal(logits, logits2)
    expected = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1))
    assert loss.ndim == 0 and torch.allclose(loss, expected)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 1.0  # near uniform at init
    short, _ = model(idx[:, :5])  # shorter sequences are fine and see the same prefix
    assert torch.allclose(short, logits[:, :5], atol=1e-5)
    with pytest.raises(ValueError, match="context_length"):
        model(random_tokens(cfg, length=cfg.context_length + 1))
    with pytest.raises(ValueError, match="idx"):
        model(idx[0])


@pytest.mark.parametrize("variant", ["gpt_qknorm_gelu", "ngpt"])
def test_bf16_autocast_forward(variant):
    model = make(**VARIANTS[variant])
    idx = random_tokens(model.config)
    _, loss32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert abs(loss.item() - loss32.item()) < 0.05
    loss.backward()
    assert all(p.grad.dtype == p.dtype and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_causality(variant):
    model = make(**VARIANTS[variant])
    cfg = model.config
    idx = random_tokens(cfg, batch=1)
    t = 7
    changed = idx.clone()
    changed[0, t] = (idx[0, t] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert (a[:, :t] - b[:, :t]).abs().max().item() < 1e-6
    assert (a[:, t] - b[:, t]).abs().max().item() > 1e-4
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().amax(dim=-1).min().item() > 1e-6  # every later position


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_round_trip(variant):
    src = make(seed=0, **VARIANTS[variant])
    dst = make(seed=1, **VARIANTS[variant])
    state = src.state_dict()
    assert not any("rotary" in key for key in state)
    idx = random_tokens(src.config)
    assert not torch.equal(src(idx)[0], dst(idx)[0])
    dst.load_state_dict(state)  # strict
    assert torch.equal(src(idx)[0], dst(idx)[0])
    if src.config.tied_embeddings:
        assert dst.lm_head.weight is dst.wte.weight


@pytest.mark.parametrize(
    "kind, lr", [("gpt", 1e-2), ("ngpt", 2e-2)]  # nGPT: no warmup or decay; post_step after each step
)
def test_memorizes_a_short_sequence(kind, lr):
    model = make(kind, n_embd=64, context_length=32, vocab_size=64)
    g = torch.Generator().manual_seed(5)
    seq = torch.randint(0, 64, (1, 33), generator=g)
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.optimizer_groups(0.0), lr=lr, betas=(0.9, 0.95))
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.post_step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_optimizer_groups_cover_every_parameter_once(variant):
    model = make(**VARIANTS[variant])
    groups = model.optimizer_groups(0.1)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    if model.config.kind == "ngpt":
        assert all(g["weight_decay"] == 0.0 for g in groups)
    else:
        decay, no_decay = groups
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters() if p.ndim == 2}
        assert any(p is model.wte.weight for p in decay["params"])
        assert all(p.ndim == 1 for p in no_decay["params"])
    torch.optim.AdamW(groups, lr=1e-3)  # a valid param-group list


def expected_param_count(cfg: ModelConfig) -> int:
    """Counted from the shapes: qkv 3d^2, attention out d^2, SwiGLU/GELU in and out matrices."""
    d, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layers
    h = cfg.mlp_hidden or 4 * d
    mlp = 3 * d * h if cfg.mlp == "swiglu" else 2 * d * h
    embeddings = V * d * (1 if cfg.tied_embeddings else 2)
    if cfg.kind == "gpt":
        per_layer = 4 * d * d + mlp + 2 * d + (2 * (d // cfg.n_heads) if cfg.qk_norm else 0)
        return embeddings + L * per_layer + d  # + final norm
    # nGPT: s_qk (d), alpha_A and alpha_M (d each), s_u and s_v (h each); s_z (V)
    per_layer = 4 * d * d + mlp + 3 * d + 2 * h
    return embeddings + L * per_layer + V


SEED = dict(n_layers=12, n_heads=8, n_embd=768, vocab_size=50304, context_length=1024)
GPT2_SMALL = dict(n_layers=12, n_heads=12, n_embd=768, vocab_size=50304, context_length=1024)


@pytest.mark.parametrize("kind", ["gpt", "ngpt"])
@pytest.mark.parametrize("shape", [SEED, GPT2_SMALL], ids=["seed", "gpt2_small"])
def test_full_size_configs_build_and_count(kind, shape):
    cfg = ModelConfig(kind=kind, **shape)
    with torch.device("meta"):  # full construction and init, no memory or compute
        model = build_model(cfg)
        logits, _ = model(torch.zeros(1, 8, dtype=torch.long))
    assert logits.shape == (1, 8, 50304)
    assert model.num_params() == expected_param_count(cfg)
    if kind == "gpt" and shape is GPT2_SMALL:
        d, V = 768, 50304  # untied, SwiGLU hidden 4d: 2 V d + 12 (16 d^2 + 2 d) + d
        assert model.num_params() == 2 * V * d + 12 * (16 * d * d + 2 * d) + d == 190_532_352


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_num_params_and_flops_per_token(variant):
    model = make(**VARIANTS[variant])
    cfg = model.config
    total = expected_param_count(cfg)
    assert model.num_params() == total == sum(p.numel() for p in model.parameters())
    embedding = 0 if cfg.tied_embeddings else cfg.vocab_size * cfg.n_embd
    assert model.num_params(exclude_embedding=True) == total - embedding
    attention = 12 * cfg.n_layers * cfg.n_embd
    assert model.flops_per_token() == 6 * (total - embedding) + attention * cfg.context_length
    assert model.flops_per_token(context_length=4) == 6 * (total - embedding) + attention * 4


def test_gpt_init_statistics():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_embd=64, n_layers=3))
    std, L = 0.02, 3
    assert abs(model.wte.weight.std().item() - std) < 0.1 * std
    assert abs(model.lm_head.weight.std().item() - std) < 0.1 * std
    for block in model.blocks:
        assert abs(block.attn.qkv.weight.std().item() - std) < 0.1 * std
        assert abs(block.mlp.fc.weight.std().item() - std) < 0.1 * std
        for proj in (block.attn.proj, block.mlp.proj):
            assert abs(proj.weight.std().item() - std / math.sqrt(2 * L)) < 0.1 * std / math.sqrt(2 * L)
        assert torch.equal(block.norm_attn.weight, torch.ones(64))
    assert all(p.ndim in (1, 2) for p in model.parameters())  # no biases
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    model.post_step()  # a no-op for the baseline


# ---------------------------------------------------------------------------------------------
# nGPT: the hypersphere
# ---------------------------------------------------------------------------------------------
EXPECTED_NORM_DIMS = {
    "wte.weight": 1,
    "lm_head.weight": 1,
    "blocks.0.attn.qkv.weight": 1,
    "blocks.0.attn.proj.weight": 0,
    "blocks.0.mlp.fc.weight": 1,
    "blocks.0.mlp.proj.weight": 0,
    "blocks.1.attn.qkv.weight": 1,
    "blocks.1.attn.proj.weight": 0,
    "blocks.1.mlp.fc.weight": 1,
    "blocks.1.mlp.proj.weight": 0,
}


def max_norm_error(model: NGPT) -> float:
    return max(
        (torch.linalg.vector_norm(p.float(), dim=dim) - 1).abs().max().item()
        for _, p, dim in model.normalized_matrices()
    )


def test_ngpt_normalized_matrix_list():
    model = make("ngpt", mlp_hidden=48)
    assert {name: dim for name, _, dim in model.normalized_matrices()} == EXPECTED_NORM_DIMS
    # the normalized axis is the embedding axis: it has n_embd entries
    for _, p, dim in model.normalized_matrices():
        assert p.shape[dim] == model.config.n_embd
    tied = make("ngpt", tied_embeddings=True)
    names = [name for name, _, _ in tied.normalized_matrices()]
    assert "wte.weight" in names and "lm_head.weight" not in names


@pytest.mark.parametrize("variant", ["ngpt", "ngpt_tied"])
def test_ngpt_matrices_unit_norm_at_init_and_after_steps(variant):
    model = make(**VARIANTS[variant])
    assert max_norm_error(model) < 1e-5
    opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-2)
    idx = random_tokens(model.config)
    for _ in range(2):
        _, loss = model(idx, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert max_norm_error(model) > 1e-3  # the step left the sphere ...
        model.post_step()
        assert max_norm_error(model) < 1e-5  # ... and post_step brought it back


def test_ngpt_post_step_in_bfloat16_writes_back_bf16():
    model = make("ngpt").to(torch.bfloat16)
    with torch.no_grad():
        for _, p, _ in model.normalized_matrices():
            p.mul_(3.0)
    model.post_step()
    for _, p, _ in model.normalized_matrices():
        assert p.dtype == torch.bfloat16
    assert max_norm_error(model) < 1e-2  # bf16 storage precision


def test_ngpt_hidden_states_are_unit_norm():
    model = make("ngpt")
    perturb_vectors(model)
    outputs, _ = capture_block_outputs(model)
    idx = random_tokens(model.config)
    model(idx)
    assert len(outputs) == model.config.n_layers
    assert (model.wte(idx).norm(dim=-1) - 1).abs().max().item() < 1e-5  # h_0
    for h in outputs:
        assert (h.norm(dim=-1) - 1).abs().max().item() < 1e-5


def test_ngpt_effective_scalars_at_init():
    model = make("ngpt", mlp_hidden=48)
    cfg, d = model.config, model.config.n_embd
    eff = model.effective_scalars()
    L, H, D, V = cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.vocab_size
    shapes = {"alpha_attn": (L, d), "alpha_mlp": (L, d), "s_qk": (L, H, D), "s_u": (L, 48), "s_v": (L, 48), "s_z": (V,)}
    assert {k: tuple(v.shape) for k, v in eff.items()} == shapes
    paper = {"alpha_attn": 0.05, "alpha_mlp": 0.05, "s_qk": 1.0, "s_u": 1.0, "s_v": 1.0, "s_z": 1.0}
    for name, value in paper.items():
        assert torch.allclose(eff[name], torch.full_like(eff[name], value), rtol=1e-6, atol=0), name
    # stored values equal the scales: 1/sqrt(d) for alpha, s_qk, s_z; 1 for s_u, s_v
    inv = 1 / math.sqrt(d)
    stored = {
        "alpha_attn": [b.alpha_attn.weight for b in model.blocks],
        "alpha_mlp": [b.alpha_mlp.weight for b in model.blocks],
        "s_qk": [b.attn.s_qk.weight for b in model.blocks],
        "s_u": [b.mlp.s_u.weight for b in model.blocks],
        "s_v": [b.mlp.s_v.weight for b in model.blocks],
        "s_z": [model.s_z.weight],
    }
    scales = {"alpha_attn": inv, "alpha_mlp": inv, "s_qk": inv, "s_u": 1.0, "s_v": 1.0, "s_z": inv}
    for name, params in stored.items():
        for p in params:
            assert torch.allclose(p, torch.full_like(p, scales[name]), rtol=1e-6, atol=0), name


def test_ngpt_custom_init_and_scale():
    model = make("ngpt", s_u_init=2.0, s_u_scale=0.5, alpha_mlp_init=0.1, alpha_mlp_scale=0.01)
    eff = model.effective_scalars()
    assert torch.allclose(model.blocks[0].mlp.s_u.weight, torch.full((128,), 0.5))
    assert torch.allclose(eff["s_u"], torch.full_like(eff["s_u"], 2.0))
    assert torch.allclose(model.blocks[1].alpha_mlp.weight, torch.full((32,), 0.01))
    assert torch.allclose(eff["alpha_mlp"], torch.full_like(eff["alpha_mlp"], 0.1))


def test_ngpt_zero_vectors_stay_finite():
    x = torch.zeros(3, 8, requires_grad=True)
    y = l2_normalize(x, eps=1e-8)
    assert torch.isfinite(y).all() and torch.equal(y, torch.zeros(3, 8))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()

    model = make("ngpt")
    idx = random_tokens(model.config)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[:4] = 0.0  # zero rows of W_q
        model.blocks[1].mlp.proj.weight.zero_()  # MLP output exactly zero -> h_M = Norm(0)
    logits, loss = model(idx, idx)
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.post_step()  # zero rows/columns stay zero instead of turning into NaN
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # A zero embedding row makes h = 0 through every block for that token: still finite logits.
    # (Not its gradient: each Norm of an exact zero vector has derivative 1/eps, and the chain of
    # them overflows float32. Unit-norm rows never become exactly zero in training.)
    with torch.no_grad():
        model.wte.weight[idx[0, 0]] = 0.0
        logits, loss = model(idx, idx)
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert torch.equal(logits[0, 0], torch.zeros_like(logits[0, 0]))


# ---------------------------------------------------------------------------------------------
# torch.compile (CPU inductor): one compiled forward per model
# ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", ["gpt", "ngpt"])
def test_torch_compile_matches_eager(kind):
    torch._dynamo.reset()
    overrides = dict(n_layers=1, qk_norm=True) if kind == "gpt" else dict(n_layers=1)
    model = make(kind, **overrides)
    idx = random_tokens(model.config)
    with torch.no_grad():
        eager, _ = model(idx)
        compiled, _ = torch.compile(model)(idx)
    assert (compiled - eager).abs().max().item() < 1e-5
    if kind == "ngpt":  # post_step is compile-safe, and gives the same weights
        reference = copy.deepcopy(model)
        with torch.no_grad():
            for (_, p, _), (_, q, _) in zip(model.normalized_matrices(), reference.normalized_matrices()):
                p.mul_(2.0)
                q.mul_(2.0)
        reference.post_step()
        torch.compile(model.post_step)()
        for (_, p, _), (_, q, _) in zip(model.normalized_matrices(), reference.normalized_matrices()):
            assert (p - q).abs().max().item() < 1e-6
