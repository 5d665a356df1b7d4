"""Model configuration: the single source of truth for model hyper-parameters and their defaults.

The training config embeds :class:`ModelConfig` directly as its ``model:`` section, so every field
below is user-facing. Fields marked "GPT only" are ignored by the nGPT model and vice versa, so a
shared ``model:`` section can serve both arms of an experiment.

The nGPT "scaled parameters" follow section 2.5 of the paper (Loshchilov et al., arXiv 2410.01131):
a vector with ``(init, scale)`` is stored as ``scale * ones`` and used as ``param * init / scale``.
The scale therefore sets the vector's effective Adam learning rate. A ``*_scale`` of ``None`` means
``1 / sqrt(n_embd)``, the value the paper uses for those vectors.
"""

# No ``from __future__ import annotations`` here: dataclasses.fields() then carry real types
# (``int``, ``int | None``), which a config schema can check values against.
import math
from dataclasses import dataclass

KINDS = ("gpt", "ngpt")
MLPS = ("swiglu", "gelu")


@dataclass
class ModelConfig:
    # --- shared by both model kinds -----------------------------------------------------------
    kind: str = "gpt"  # model family: "gpt" (pre-norm baseline) or "ngpt" (normalized transformer)
    vocab_size: int = 50304  # number of token ids (rows of the embedding and unembedding)
    n_layers: int = 12  # number of transformer blocks
    n_heads: int = 8  # attention heads per block; must divide n_embd
    n_embd: int = 768  # model width d_model; head size n_embd / n_heads must be even (RoPE)
    context_length: int = 1024  # longest sequence the model accepts (size of the RoPE table)
    mlp: str = "swiglu"  # MLP type: "swiglu" (gated SiLU) or "gelu"; nGPT supports only "swiglu"
    mlp_hidden: int | None = None  # MLP hidden width; None means 4 * n_embd
    tied_embeddings: bool = False  # share the input embedding matrix with the output head
    rope_base: float = 10000.0  # rotary embedding base (theta)
    # --- GPT only ----------------------------------------------------------------------------
    qk_norm: bool = False  # RMSNorm on q and k per head (the "GPT+" strong baseline)
    init_std: float = 0.02  # std of normal init; residual output projections use init_std/sqrt(2*n_layers)
    norm_eps: float = 1e-6  # epsilon of the RMSNorm layers
    # --- nGPT only (paper defaults; a *_scale of None means 1/sqrt(n_embd)) -------------------
    alpha_attn_init: float = 0.05  # effective initial value of the attention eigen learning rate alpha_A
    alpha_attn_scale: float | None = None  # storage scale of alpha_A (sets its effective Adam LR)
    alpha_mlp_init: float = 0.05  # effective initial value of the MLP eigen learning rate alpha_M
    alpha_mlp_scale: float | None = None  # storage scale of alpha_M
    s_qk_init: float = 1.0  # effective initial value of the q/k scaling vector s_qk
    s_qk_scale: float | None = None  # storage scale of s_qk
    s_u_init: float = 1.0  # effective initial value of the SwiGLU "up" scaling vector s_u
    s_u_scale: float = 1.0  # storage scale of s_u
    s_v_init: float = 1.0  # effective initial value of the SwiGLU "gate" scaling vector s_v
    s_v_scale: float = 1.0  # storage scale of s_v
    s_z_init: float = 1.0  # effective initial value of the logit scaling vector s_z
    s_z_scale: float | None = None  # storage scale of s_z
    ngpt_eps: float = 1e-8  # epsilon of the L2 normalizations (zero vectors give zeros, not NaN)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """Size of one attention head, ``n_embd // n_heads``."""
        return self.n_embd // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """Resolved MLP hidden width: ``mlp_hidden`` or ``4 * n_embd``."""
        return self.mlp_hidden if self.mlp_hidden is not None else 4 * self.n_embd

    def resolved_scale(self, name: str) -> float:
        """The storage scale of an nGPT scaled vector (``"alpha_attn"``, ``"s_qk"``, ...), with
        ``None`` resolved to ``1 / sqrt(n_embd)``."""
        scale = getattr(self, f"{name}_scale")
        return 1.0 / math.sqrt(self.n_embd) if scale is None else float(scale)

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` (message starting with the offending field's name) on bad values."""
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ValueError(f"kind: unknown model kind {self.kind!r}; allowed: {', '.join(map(repr, KINDS))}")
        if not isinstance(self.mlp, str) or self.mlp not in MLPS:
            raise ValueError(f"mlp: unknown MLP type {self.mlp!r}; allowed: {', '.join(map(repr, MLPS))}")

        for name in ("vocab_size", "n_layers", "n_heads", "n_embd", "context_length"):
            _check_positive_int(name, getattr(self, name))
        if self.mlp_hidden is not None:
            _check_positive_int("mlp_hidden", self.mlp_hidden)

        for name in ("tied_embeddings", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")

        for name in ("rope_base", "init_std", "norm_eps", "ngpt_eps", "s_u_scale", "s_v_scale"):
            _check_positive_float(name, getattr(self, name))
        for name in ("alpha_attn_scale", "alpha_mlp_scale", "s_qk_scale", "s_z_scale"):
            if getattr(self, name) is not None:
                _check_positive_float(name, getattr(self, name))
        for name in ("alpha_attn_init", "alpha_mlp_init", "s_qk_init", "s_u_init", "s_v_init", "s_z_init"):
            _check_finite_float(name, getattr(self, name))

        if self.n_embd % self.n_heads != 0:
            raise ValueError(f"n_heads: {self.n_heads} does not divide n_embd={self.n_embd}")
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"n_heads: head size {self.head_dim} (n_embd/n_heads) must be even for rotary embeddings "
                f"(n_embd={self.n_embd}, n_heads={self.n_heads})"
            )
        if self.kind == "ngpt" and self.mlp != "swiglu":
            raise ValueError(f"mlp: nGPT supports only 'swiglu' (the paper's MLP), got {self.mlp!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: must be positive, got {value}")


def _check_finite_float(name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")


def _check_positive_float(name: str, value: object) -> None:
    _check_finite_float(name, value)
    if value <= 0:
        raise ValueError(f"{name}: must be positive, got {value}")
