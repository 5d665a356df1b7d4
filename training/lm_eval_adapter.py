"""An lm-evaluation-harness model for datgpt's checkpoints of both arms (``pip install -e ".[eval]"``).

:class:`DatgptLM` wraps any :mod:`models` model (GPT or nGPT, through their shared ``forward(idx)``
and KV-cached ``generate``) as an ``lm_eval.api.model.TemplateLM``, the base lm-eval's own HF model
uses, so requests are tokenized exactly as lm-eval tokenizes them for a causal model:

* ``loglikelihood(context, continuation)``: ``context + continuation`` is encoded whole and split so
  that the continuation's tokens are those after the context's (a trailing space of the context goes
  to the continuation); an empty context is the tokenizer's end-of-text token (lm-eval's
  ``prefix_token_id``: 50256 for GPT-2, 256 for bytes). The model reads ``(context + continuation)[:-1]`` truncated from the left to
  its ``context_length`` (the continuation is always kept whole; one longer than ``context_length``
  tokens is an error). The result is the sum over the continuation's tokens of ``log_softmax`` of
  the model's logits, and ``is_greedy``: every continuation token is the argmax.
* ``loglikelihood_rolling(text)``: the text's tokens in disjoint windows of ``context_length``
  (lm-eval's ``get_rolling_token_windows`` with the end-of-text token as prefix), each token
  predicted once; the sum of their log-probabilities. For a text of at most ``context_length`` tokens
  this is ``-loss * n_tokens`` of ``model([EOT] + tokens[:-1], tokens)``.
* ``generate_until(context, gen_kwargs)``: the model's KV-cached ``generate`` from the last
  ``context_length`` tokens of the context (past that, ``generate`` slides its window as in
  training), greedy unless ``do_sample`` with a ``temperature`` > 0 (then ``top_k`` too, drawn from
  a generator seeded with ``seed``), at most ``max_gen_toks`` tokens (default 256), cut at the first
  of the ``until`` strings or the end-of-text token.

Vocabulary: the models' embedding is padded to ``vocab_size`` rows (e.g. 50,304); only the tokenizer's
ids are real (50,257 for GPT-2, 257 for bytes), so the logits are sliced to ``n_vocab`` before the
log-softmax (the padded rows get no probability mass, and can never be the argmax or be generated).

Tokenizers: either of training/data/tokenizer.py's (``gpt2``, ``bytes``); every request is tokenized
with it. lm-eval's perplexity metrics are tokenizer-free: ``bits_per_byte`` and ``byte_perplexity`` divide the
summed log-likelihood by the document's UTF-8 bytes, ``word_perplexity`` by its words; for a ``bytes`` model
``bits_per_byte`` is its mean loss per byte over the document, in bits.

Batching: requests are sorted by length (longest first; ties by the tokens) and scored
``batch_size`` at a time, right-padded; padded positions come after every scored position and
causal attention never lets them in, so they change nothing but floating-point rounding (batch size
1 and 7 agree within 1e-5 in float32 and 1e-10 in float64, tested; on one CPU thread they were equal).
Results come back in request order. The model is put in eval mode for each call and its mode restored afterwards. On
CUDA ``autocast`` (e.g. ``Runtime.autocast``) may be given; the log-softmax is taken in float32 (or
the logits' dtype if wider).

lm-eval is imported when this module is, but its absence is reported only when a :class:`DatgptLM`
is built (:class:`EvalSetupError`, one line), so the rest of datgpt imports without the extra.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from training.data.tokenizer import get_encoding

try:  # the optional extra: pip install -e ".[eval]"
    from lm_eval.api.model import TemplateLM as _Base

    _MISSING: Exception | None = None
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    _Base, _MISSING = object, _err

DEFAULT_MAX_GEN_TOKS = 256
GEN_CHUNK = 32  # tokens generated per call of model.generate between checks of the stop strings
INSTALL_HINT = 'pip install -e ".[eval]"'


class EvalSetupError(ValueError):
    """lm-eval missing, an unknown task, a task whose data cannot be reached; one line."""


def require_lm_eval() -> None:
    """Raise :class:`EvalSetupError` (one line) when lm-eval is not installed."""
    if _MISSING is not None:
        raise EvalSetupError(f"downstream evaluation needs lm-eval, which is not installed ({INSTALL_HINT})")


class DatgptLM(_Base):
    """lm-eval's view of one datgpt model (see the module docstring for what each request computes).

    ``model``: a :mod:`models` model (its config gives ``context_length``); ``tokenizer``: the name
    for :func:`training.data.tokenizer.get_encoding`; ``batch_size``: sequences per forward pass;
    ``device``: where the model is (it is not moved); ``autocast``: a context manager entered around
    each forward pass (default none); ``seed``: for sampled generation; ``progress``: tqdm bars.
    """

    def __init__(self, model: torch.nn.Module, *, tokenizer: str = "gpt2", batch_size: int = 16,
                 device: torch.device | str | None = None, autocast=None, seed: int = 0,
                 progress: bool = True) -> None:
        require_lm_eval()
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        self.model = model
        self.enc = get_encoding(tokenizer)
        self.n_vocab = min(self.enc.n_vocab, model.config.vocab_size)
        self._batch_size = int(batch_size)
        self._device = torch.device(device) if device is not None else next(model.parameters()).device
        self.autocast = autocast
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------------ what lm-eval asks of a model
    @property
    def eot_token_id(self) -> int:
        return self.enc.eot_token

    @property
    def prefix_token_id(self) -> int:
        return self.enc.eot_token

    @property
    def max_length(self) -> int:
        return self.model.config.context_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.enc.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The tokenizer's ids of ordinary text (special-token text such as ``<|endoftext|>`` stays plain
        text, as in training)."""
        return self.enc.encode_ordinary(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.enc.decode(list(tokens))

    # ------------------------------------------------------------------ scoring
    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False, dynamic_ncols=True)

    @contextlib.contextmanager
    def _eval_mode(self):
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), (self.autocast if self.autocast is not None else contextlib.nullcontext()):
                yield
        finally:
            self.model.train(was_training)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """``requests``: ``(key, context_tokens, continuation_tokens)`` triples (the key is unused);
        returns ``(sum of log-probabilities, is_greedy)`` per request, in request order."""
        return self.score_tokens([(ctx, cont) for _, ctx, cont in requests], disable_progress=disable_tqdm)

    def score_tokens(self, pairs: list[tuple[list[int], list[int]]], *,
                     disable_progress: bool = False) -> list[tuple[float, bool]]:
        """``(context tokens, continuation tokens)`` pairs -> ``(log-likelihood, is_greedy)`` each.

        The model reads ``(context + continuation)[:-1]``, its last ``context_length`` tokens when
        longer (truncated from the left; the continuation is kept whole)."""
        window = self.max_length
        inputs, targets = [], []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError(f"request {i}: the continuation has no tokens")
            if not ctx:
                raise ValueError(f"request {i}: the context has no tokens (an empty context is "
                                 f"[{self.eot_token_id}])")
            if len(cont) > window:
                raise ValueError(f"request {i}: a continuation of {len(cont)} tokens does not fit the model's "
                                 f"context_length={window}")
            inputs.append((list(ctx) + list(cont))[-(window + 1):-1])
            targets.append(list(cont))
        order = sorted(range(len(pairs)), key=lambda i: (-len(inputs[i]), inputs[i], targets[i]))
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        bar = self._bar(len(pairs), "loglikelihood") if not disable_progress else None
        with self._eval_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                length = len(inputs[batch[0]])  # the longest: sorted longest first
                x = torch.full((len(batch), length), self.eot_token_id, dtype=torch.long)
                for row, i in enumerate(batch):
                    x[row, :len(inputs[i])] = torch.tensor(inputs[i], dtype=torch.long)
                logits, _ = self.model(x.to(self.device))
                for row, i in enumerate(batch):
                    n, c = len(inputs[i]), len(targets[i])
                    scored = self._log_softmax(logits[row, n - c:n])  # the positions predicting the continuation
                    tokens = torch.tensor(targets[i], dtype=torch.long, device=scored.device)
                    total = scored.gather(-1, tokens[:, None]).double().sum().item()
                    greedy = bool((scored.argmax(dim=-1) == tokens).all().item())
                    results[i] = (total, greedy)
                if bar is not None:
                    bar.update(len(batch))
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the tokenizer's ``n_vocab`` real ids (the padded rows are cut)."""
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return F.log_softmax(logits[..., :self.n_vocab].to(dtype), dim=-1)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text (``requests[i].args == (text,)``), every token
        predicted once, in disjoint windows of ``context_length`` tokens after an end-of-text prefix."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                pairs.append((ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self.score_tokens(pairs, disable_progress=disable_tqdm or not self.progress)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continue each ``(context, gen_kwargs)`` request (see the module docstring). Requests with
        the same prompt length and settings are generated together, ``batch_size`` at a time."""
        jobs = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            settings = _generation_settings(gen_kwargs, self.enc.decode([self.eot_token_id]))
            prompt = (self.tok_encode(context) or [self.eot_token_id])[-self.max_length:]
            jobs.append((i, prompt, settings))
        jobs.sort(key=lambda job: (-len(job[1]), job[2], job[1]))
        out: list[str | None] = [None] * len(requests)
        bar = self._bar(len(requests), "generate_until") if not disable_tqdm else None
        start = 0
        while start < len(jobs):
            end = start + 1
            while (end < len(jobs) and end - start < self.batch_size and len(jobs[end][1]) == len(jobs[start][1])
                   and jobs[end][2] == jobs[start][2]):
                end += 1
            batch = jobs[start:end]
            texts = self._generate([job[1] for job in batch], batch[0][2])
            for job, text in zip(batch, texts):
                out[job[0]] = text
                self.cache_hook.add_partial("generate_until", requests[job[0]].args, text)
            if bar is not None:
                bar.update(len(batch))
            start = end
        if bar is not None:
            bar.close()
        return out  # type: ignore[return-value]

    def _generate(self, prompts: list[list[int]], settings: tuple) -> list[str]:
        until, max_gen_toks, temperature, top_k = settings
        idx = torch.tensor(prompts, dtype=torch.long, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.seed) if temperature > 0 else None
        produced = 0
        texts = [""] * len(prompts)
        done = [False] * len(prompts)
        with self._eval_mode():
            while produced < max_gen_toks and not all(done):
                n = min(GEN_CHUNK, max_gen_toks - produced)
                idx = self.model.generate(idx, n, temperature=temperature, top_k=top_k or None, generator=generator,
                                          vocab_size=self.n_vocab)
                produced += n
                for row in range(len(prompts)):
                    new = idx[row, len(prompts[row]):].tolist()
                    if self.eot_token_id in new:
                        new = new[:new.index(self.eot_token_id)]
                        done[row] = True
                    texts[row], stopped = _cut(self.tok_decode(new), until)
                    done[row] = done[row] or stopped
        return texts


def _generation_settings(gen_kwargs: dict | None, eot_text: str) -> tuple:
    """``(until, max_gen_toks, temperature, top_k)`` from lm-eval's ``gen_kwargs`` (hashable, so
    requests with equal settings batch together). Greedy unless ``do_sample`` and ``temperature`` > 0."""
    kwargs = dict(gen_kwargs or {})
    until = kwargs.pop("until", None) or []
    if isinstance(until, str):
        until = [until]
    until = tuple(s for s in list(until) + [eot_text] if s)
    max_gen_toks = int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", DEFAULT_MAX_GEN_TOKS)))
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    top_k = int(kwargs.pop("top_k", 0) or 0)
    if not do_sample:
        temperature, top_k = 0.0, 0
    return until, max_gen_toks, temperature, top_k


def _cut(text: str, until: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first occurrence of any of ``until``, and whether one occurred."""
    cuts = [text.find(s) for s in until if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


__all__ = ["DatgptLM", "EvalSetupError", "require_lm_eval"]
