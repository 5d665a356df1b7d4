"""ModelConfig: defaults, derived sizes and validation messages (each names its field first)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from models import GPT, NGPT, ModelConfig, build_model


def test_defaults_are_the_seed_config_and_paper_values():
    c = ModelConfig()
    assert (c.kind, c.vocab_size, c.n_layers, c.n_heads, c.n_embd, c.context_length) == (
        "gpt",
        50304,
        12,
        8,
        768,
        1024,
    )
    assert (c.mlp, c.mlp_hidden, c.tied_embeddings, c.rope_base) == ("swiglu", None, False, 10000.0)
    assert (c.qk_norm, c.init_std, c.norm_eps) == (False, 0.02, 1e-6)
    assert (c.alpha_attn_init, c.alpha_mlp_init, c.s_qk_init, c.s_u_init, c.s_v_init, c.s_z_init) == (
        0.05,
        0.05,
        1.0,
        1.0,
        1.0,
        1.0,
    )
    assert (c.alpha_attn_scale, c.alpha_mlp_scale, c.s_qk_scale, c.s_z_scale) == (None, None, None, None)
    assert (c.s_u_scale, c.s_v_scale, c.ngpt_eps) == (1.0, 1.0, 1e-8)


def test_derived_sizes():
    c = ModelConfig(n_embd=768, n_heads=12)
    assert c.head_dim == 64
    assert c.hidden_dim == 4 * 768
    assert ModelConfig(mlp_hidden=2048).hidden_dim == 2048
    assert c.resolved_scale("s_z") == pytest.approx(1 / math.sqrt(768))
    assert ModelConfig(s_z_scale=0.5).resolved_scale("s_z") == 0.5
    assert c.resolved_scale("s_u") == 1.0


def test_config_is_a_plain_dataclass():
    c = ModelConfig(kind="ngpt", n_layers=2)
    d = dataclasses.asdict(c)
    assert d["kind"] == "ngpt" and d["n_layers"] == 2
    assert ModelConfig(**d) == c


@pytest.mark.parametrize(
    "overrides, field, fragments",
    [
        ({"n_heads": 7}, "n_heads", ["7 does not divide n_embd=768"]),
        ({"n_embd": 30, "n_heads": 2}, "n_heads", ["head size 15 (n_embd/n_heads) must be even", "n_embd=30"]),
        ({"n_embd": 0}, "n_embd", ["must be positive, got 0"]),
        ({"n_heads": 0}, "n_heads", ["must be positive"]),
        ({"n_layers": -1}, "n_layers", ["must be positive"]),
        ({"vocab_size": 0}, "vocab_size", ["must be positive"]),
        ({"context_length": 0}, "context_length", ["must be positive"]),
        ({"mlp_hidden": 0}, "mlp_hidden", ["must be positive"]),
        ({"n_heads": 2.0}, "n_heads", ["must be an integer"]),
        ({"n_layers": True}, "n_layers", ["must be an integer"]),
        ({"kind": "bert"}, "kind", ["'bert'", "'gpt'", "'ngpt'"]),
        ({"mlp": "relu"}, "mlp", ["'relu'", "'swiglu'", "'gelu'"]),
        ({"kind": "ngpt", "mlp": "gelu"}, "mlp", ["nGPT supports only 'swiglu'"]),
        ({"rope_base": 0.0}, "rope_base", ["must be positive"]),
        ({"init_std": 0.0}, "init_std", ["must be positive"]),
        ({"norm_eps": -1e-6}, "norm_eps", ["must be positive"]),
        ({"ngpt_eps": 0.0}, "ngpt_eps", ["must be positive"]),
        ({"s_u_scale": 0.0}, "s_u_scale", ["must be positive"]),
        ({"s_v_scale": -1.0}, "s_v_scale", ["must be positive"]),
        ({"s_z_scale": 0.0}, "s_z_scale", ["must be positive"]),
        ({"alpha_attn_scale": -0.1}, "alpha_attn_scale", ["must be positive"]),
        ({"alpha_mlp_init": float("nan")}, "alpha_mlp_init", ["finite"]),
        ({"s_qk_init": "1"}, "s_qk_init", ["finite"]),
        ({"tied_embeddings": 1}, "tied_embeddings", ["true or false"]),
    ],
)
def test_bad_values_raise_naming_the_field(overrides, field, fragments):
    with pytest.raises(ValueError) as err:
        ModelConfig(**overrides)
    message = str(err.value)
    assert message.startswith(f"{field}:"), message
    for fragment in fragments:
        assert fragment in message, message


def test_validate_catches_mutation_and_build_model_validates():
    c = ModelConfig(n_layers=1, n_embd=32, n_heads=2, vocab_size=16, context_length=8)
    c.n_heads = 5
    with pytest.raises(ValueError, match=r"^n_heads: 5 does not divide n_embd=32"):
        c.validate()
    with pytest.raises(ValueError, match=r"^n_heads"):
        build_model(c)


def test_model_classes_check_kind():
    small = dict(n_layers=1, n_embd=32, n_heads=2, vocab_size=16, context_length=8)
    with pytest.raises(ValueError, match=r"^kind"):
        GPT(ModelConfig(kind="ngpt", **small))
    with pytest.raises(ValueError, match=r"^kind"):
        NGPT(ModelConfig(kind="gpt", **small))
    assert isinstance(build_model(ModelConfig(kind="gpt", **small)), GPT)
    assert isinstance(build_model(ModelConfig(kind="ngpt", **small)), NGPT)
