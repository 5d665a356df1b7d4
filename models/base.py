"""The interface both model classes share (:class:`LanguageModel`): logits, the loss, generation, optimizer
groups, the per-step hook, parameter and FLOP counts. The layers they are built from are in
:mod:`models.layers`; generation (KV cache, sampling) in :mod:`models.generation`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .generation import KVCache, generate


class LanguageModel(nn.Module):
    """Base class of :class:`~models.gpt.GPT` and :class:`~models.ngpt.NGPT`.

    Subclasses define ``wte`` (the input ``nn.Embedding``), ``lm_head`` (the output ``nn.Linear``,
    possibly sharing ``wte.weight``), ``blocks``, and implement :meth:`logits`,
    :meth:`optimizer_groups` and :meth:`post_step`.
    """

    config: ModelConfig
    wte: nn.Embedding
    lm_head: nn.Linear

    def logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:  # pragma: no cover
        """``[B, T]`` token ids -> ``[B, T, vocab]`` logits; with ``cache``, ``idx`` continues the
        cached positions (see :class:`KVCache`)."""
        raise NotImplementedError

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` ``[B, T]`` token ids -> ``(logits [B, T, vocab], loss or None)``.

        The loss is the mean cross-entropy over all tokens (targets of -100 are ignored), computed
        in float32 even when the logits are bf16 under autocast. ``T`` may not exceed
        ``config.context_length``.
        """
        if idx.ndim != 2:
            raise ValueError(f"idx: expected token ids of shape [batch, time], got shape {tuple(idx.shape)}")
        if idx.shape[1] > self.config.context_length:
            raise ValueError(
                f"idx: sequence length {idx.shape[1]} exceeds context_length={self.config.context_length}"
            )
        logits = self.logits(idx)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        vocab_size: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue the prompts ``idx`` ``[B, T]`` by ``max_new_tokens`` tokens; returns ``[B, T +
        max_new_tokens]`` (the prompts included).

        Each token is drawn from ``softmax(logits / temperature)`` restricted to the ``top_k`` most
        likely tokens (:func:`models.generation.sample_next`); ``temperature`` 0 is greedy (argmax). ``generator``
        makes sampling deterministic (it must live on the model's device). ``vocab_size`` limits
        the choice to the first ids (the tokenizer's tokens, not the padded rows of the embedding).

        With ``use_cache`` the prompt is run once and each new token costs one position
        (:class:`KVCache`). Once the sequence is longer than ``config.context_length``, the model
        sees the last ``context_length`` tokens (a sliding window, as in training); every position's
        context then changes at each step, so the window is recomputed in full for each further token.
        ``use_cache=False`` recomputes the window at every step (the reference the tests compare to).
        The model is put in eval mode for the call and restored afterwards.
        """
        return generate(self, idx, max_new_tokens, temperature, top_k, generator, vocab_size, use_cache)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def post_step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def hidden_matrices(self) -> list[tuple[str, nn.Parameter, int]]:
        """The weight matrices of the hidden layers, what Muon trains: ``(name, parameter, parts)``, where a
        parameter that stacks ``parts`` matrices by rows (a fused ``[W_q; W_k; W_v]``) is ``parts`` matrices
        to Muon. Never the embeddings, the output head or a vector. Only models Muon is defined for have
        them (GPT)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its hidden matrices")

    @property
    def embeddings_tied(self) -> bool:
        return self.lm_head.weight is self.wte.weight

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Number of parameters, a shared (tied) matrix counted once.

        ``exclude_embedding=True`` leaves out the input token embedding, which is a lookup and costs
        no matmul FLOPs. With tied embeddings the shared matrix is *kept*, since it is also the output
        head (whose matmul does run).
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied matrix once
        if exclude_embedding and not self.embeddings_tied:
            n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, context_length: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), the PaLM/Chinchilla convention:

        ``6 * N + 12 * n_layers * n_embd * T``

        where ``N = num_params(exclude_embedding=True)`` (every parameter but the input embedding;
        with tied embeddings the shared matrix counts once, as the head matmul still runs), and the
        second term is the attention score/value matmuls at sequence length
        ``T = context_length`` (default ``config.context_length``). Element-wise work (norms,
        activations, softmax) is not counted.
        """
        T = self.config.context_length if context_length is None else int(context_length)
        c = self.config
        return 6 * self.num_params(exclude_embedding=True) + 12 * c.n_layers * c.n_embd * T
