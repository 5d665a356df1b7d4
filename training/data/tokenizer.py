"""The GPT-2 tokenizer through tiktoken, working offline.

tiktoken's `gpt2` encoding downloads its vocabulary on first use. To work on machines without
internet, the BPE ranks are looked up locally first, in this order:

1. the file named by `DATGPT_GPT2_VOCAB` (a `gpt2.tiktoken` ranks file);
2. `whisper/assets/gpt2.tiktoken` shipped by the PyPI package `openai-whisper` (same ranks as GPT-2;
   `pip install --no-deps openai-whisper` brings just the file, without whisper's heavy dependencies);
3. tiktoken's own `get_encoding("gpt2")`, which uses its cache or downloads.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import tiktoken

GPT2_VOCAB_ENV = "DATGPT_GPT2_VOCAB"
GPT2_N_VOCAB = 50257
EOT_TOKEN = 50256


class TokenizerError(RuntimeError):
    """The tokenizer's vocabulary could not be found or loaded."""


def _local_ranks_file() -> Path | None:
    env = os.environ.get(GPT2_VOCAB_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise TokenizerError(f"{GPT2_VOCAB_ENV}={env}: no such file")
        return path
    spec = importlib.util.find_spec("whisper")  # finds the package without importing it (or torch)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "assets" / "gpt2.tiktoken"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def get_encoding(name: str = "gpt2") -> tiktoken.Encoding:
    if name != "gpt2":
        raise TokenizerError(f"tokenizer: unknown tokenizer {name!r}; supported: gpt2")
    ranks_file = _local_ranks_file()
    if ranks_file is not None:
        from tiktoken.load import load_tiktoken_bpe
        from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

        ranks = load_tiktoken_bpe(str(ranks_file))
        if len(ranks) != EOT_TOKEN:
            raise TokenizerError(f"{ranks_file}: expected {EOT_TOKEN} GPT-2 BPE ranks, found {len(ranks)}")
        return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                 special_tokens={ENDOFTEXT: EOT_TOKEN}, explicit_n_vocab=GPT2_N_VOCAB)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # network failure, proxy, ...: say how to fix it offline
        raise TokenizerError(
            "could not load the GPT-2 vocabulary: tiktoken's download failed "
            f"({type(err).__name__}). Offline, run `pip install --no-deps openai-whisper` (ships "
            f"gpt2.tiktoken) or set {GPT2_VOCAB_ENV} to a gpt2.tiktoken file") from None


def encode(text: str, name: str = "gpt2") -> list[int]:
    """Encode ordinary text (special tokens in the text are treated as plain text)."""
    return get_encoding(name).encode_ordinary(text)
