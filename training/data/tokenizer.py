"""The tokenizers: GPT-2 BPE through tiktoken (working offline) and UTF-8 bytes.

`get_encoding(name)` returns an object with tiktoken's `Encoding` interface as far as datgpt uses it
(`encode_ordinary`, `decode`, `eot_token`, `n_vocab`, `name`), so data preparation, corpora, sampling and the
lm-eval adapter take either tokenizer by name:

* ``gpt2``: tiktoken's GPT-2 BPE, 50,257 ids; 50256 is the end-of-text token. tiktoken downloads its
  vocabulary on first use; to work offline, the BPE ranks are looked up locally first, in this order:

  1. the file named by `DATGPT_GPT2_VOCAB` (a `gpt2.tiktoken` ranks file);
  2. `whisper/assets/gpt2.tiktoken` shipped by the PyPI package `openai-whisper` (same ranks as GPT-2;
     `pip install --no-deps openai-whisper` brings just the file, without whisper's heavy dependencies);
  3. tiktoken's own `get_encoding("gpt2")`, which uses its cache or downloads.

* ``bytes``: the text's UTF-8 bytes, ids 0-255, and 256 the end-of-document token (257 ids). A prepared
  shard folder puts id 256 before every document, as it puts 50256 there for GPT-2 (training/data/prepare.py);
  a text corpus (`data.dataset`, `data.path`) is one document and holds no 256. Decoding drops nothing: a
  byte sequence that is not valid UTF-8 (a multi-byte character cut by a window or by sampling) becomes
  U+FFFD replacement characters, as tiktoken does, and 256 becomes ``<|endoftext|>``. On ASCII text, bytes
  and characters are the same sequence (Tiny Shakespeare is ASCII: nanoGPT's shakespeare_char in other ids).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

GPT2_VOCAB_ENV = "DATGPT_GPT2_VOCAB"
GPT2_N_VOCAB = 50257
EOT_TOKEN = 50256  # GPT-2's end-of-text id
BYTE_EOT_TOKEN = 256  # the bytes tokenizer's end-of-document id
BYTE_N_VOCAB = 257
END_OF_TEXT = "<|endoftext|>"

N_VOCAB = {"gpt2": GPT2_N_VOCAB, "bytes": BYTE_N_VOCAB}  # the tokenizers by name: the ids a model must embed
UNIT = {"gpt2": "token", "bytes": "byte"}  # what one id is: the unit of a loss (nats per token / per byte)


class TokenizerError(RuntimeError):
    """The tokenizer's vocabulary could not be found or loaded."""


class ByteTokenizer:
    """UTF-8 bytes as token ids (0-255), plus the end-of-document id 256."""

    name = "bytes"
    n_vocab = BYTE_N_VOCAB
    eot_token = BYTE_EOT_TOKEN

    def encode_ordinary(self, text: str) -> list[int]:
        """The UTF-8 bytes of `text` (lone surrogates, which UTF-8 cannot hold, become '?')."""
        return list(text.encode("utf-8", errors="replace"))

    def decode(self, ids, errors: str = "replace") -> str:
        """Bytes back to text: invalid UTF-8 becomes U+FFFD (with errors='replace'), 256 ``<|endoftext|>``."""
        out, run = [], bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
            elif i == BYTE_EOT_TOKEN:
                out += [run.decode("utf-8", errors=errors), END_OF_TEXT]
                run = bytearray()
            else:
                raise ValueError(f"bytes tokenizer: id {i} is not a byte (0-255) or end-of-document ({BYTE_EOT_TOKEN})")
        out.append(run.decode("utf-8", errors=errors))
        return "".join(out)


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


def _gpt2():
    import tiktoken

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


@functools.lru_cache(maxsize=None)
def get_encoding(name: str = "gpt2"):
    """The tokenizer called `name` (see the module docstring)."""
    if name == "bytes":
        return ByteTokenizer()
    if name != "gpt2":
        raise TokenizerError(f"tokenizer: unknown tokenizer {name!r}; supported: {', '.join(N_VOCAB)}")
    return _gpt2()


def encode(text: str, name: str = "gpt2") -> list[int]:
    """Encode ordinary text (special tokens in the text are treated as plain text)."""
    return get_encoding(name).encode_ordinary(text)
