"""Three small local lm-eval tasks built from The Verdict: a smoke test, not a benchmark.

lm-eval's standard tasks read their data from the Hugging Face Hub. These read JSONL files shipped
in this folder, so an evaluation runs offline (tests, CI, a machine without internet):

* ``verdict_lambada``: LAMBADA-style last-word prediction. Each document is a stretch of text that
  ends just before a word of at least four letters that closes a clause; the model must give that
  word (``acc``: it is the greedy continuation; ``perplexity`` of the word).
* ``verdict_choice``: two-choice ordering. Each document is a stretch of text and two
  continuations: the next eight words as written, and the same words in a shuffled order (a fixed
  seed); ``acc`` counts the documents where the model gives the written order the higher
  log-likelihood (``acc_norm`` per byte).

* ``verdict_ppl``: the held-out text as one document, scored like wikitext
  (``loglikelihood_rolling``): ``word_perplexity``, ``byte_perplexity`` and ``bits_per_byte``, which do not
  depend on the tokenizer, so GPT-2 and byte-level models are compared on one scale (for a byte-level model
  ``bits_per_byte`` is its mean loss on the text, in bits).

All three are drawn from ``verdict_heldout.txt``: the end of Edith Wharton's *The Verdict* (1908, public
domain) from the first paragraph after the last 10% of its GPT-2 tokens, i.e. text inside the demo's
validation split (``data.val_fraction: 0.1``), never trained on by the demo. About 1,800 characters:
tens of documents per accuracy task, so an accuracy here moves in steps of a few percent. Use the real tasks
(README, "Downstream accuracy") for results.

    python -m training.eval_tasks [--source the-verdict.txt]

rebuilds the JSONL files from ``verdict_heldout.txt`` (and, with ``--source``, first extracts that
file from the full text); the result is byte-identical to the shipped files (tests check it).
The task YAMLs (``verdict_lambada.yaml``, ``verdict_choice.yaml``, ``verdict_ppl.yaml``, tag
``datgpt_local``) load the JSONL through ``verdict_tasks.py``; :data:`TASKS_DIR` is what lm-eval's
``TaskManager(include_path=...)`` is given.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
HELDOUT_FILE = TASKS_DIR / "verdict_heldout.txt"
LAMBADA_FILE = TASKS_DIR / "verdict_lambada.jsonl"
CHOICE_FILE = TASKS_DIR / "verdict_choice.jsonl"
PPL_FILE = TASKS_DIR / "verdict_ppl.jsonl"
LOCAL_TASKS = ("verdict_lambada", "verdict_choice", "verdict_ppl")  # the task names the YAMLs define
LOCAL_TAG = "datgpt_local"  # both at once: --tasks datgpt_local

VAL_FRACTION = 0.1  # the demo's data.val_fraction: the held-out text is its validation split
CONTEXT_WORDS = 48  # at most this many words of context before the target
MIN_CONTEXT_WORDS = 8
TARGET_MIN_LETTERS = 4
CHOICE_WORDS = 8  # length of each continuation of verdict_choice
CHOICE_STRIDE = 8  # words between the starts of two verdict_choice documents
CHOICE_SEED = 0

_WORD = re.compile(r"[A-Za-z]+")
_CLAUSE_END = set(",.;:!?-\"'")


def heldout_text(full_text: str) -> str:
    """The end of ``full_text`` from the first paragraph that starts inside its last ``VAL_FRACTION``
    of GPT-2 tokens (the demo's validation split), whitespace collapsed to single spaces."""
    from training.data.tokenizer import get_encoding

    enc = get_encoding("gpt2")
    ids = enc.encode_ordinary(full_text)
    n_val = int(round(len(ids) * VAL_FRACTION))
    tail = enc.decode(ids[len(ids) - n_val:])
    start = tail.find("\n\n")
    if start < 0:
        raise ValueError("no paragraph starts inside the validation split")
    return " ".join(tail[start:].split()) + "\n"


def lambada_docs(text: str) -> list[dict]:
    """LAMBADA-style documents: ``context`` (text up to the space before the target word) and
    ``target`` (a space and the word), for every word of at least ``TARGET_MIN_LETTERS`` letters
    that follows a space and is followed by punctuation, with at least ``MIN_CONTEXT_WORDS`` words
    before it (at most ``CONTEXT_WORDS`` are kept, starting at a word)."""
    text = text.strip()
    words = list(_WORD.finditer(text))
    docs = []
    for i, word in enumerate(words):
        s, e = word.span()
        if (i < MIN_CONTEXT_WORDS or len(word.group()) < TARGET_MIN_LETTERS or s == 0 or text[s - 1] != " "
                or e >= len(text) or text[e] not in _CLAUSE_END or text[e] == "'" and text[e + 1:e + 2].isalpha()):
            continue
        start = _word_start(text, words[max(0, i - CONTEXT_WORDS)].start())
        docs.append({"context": text[start:s - 1], "target": " " + word.group()})
    return docs


def _word_start(text: str, pos: int) -> int:
    """The start of the whitespace-separated word holding ``pos`` (keeps an opening quote)."""
    while pos > 0 and not text[pos - 1].isspace():
        pos -= 1
    return pos


def choice_docs(text: str) -> list[dict]:
    """Two-choice documents: ``context`` (up to ``CONTEXT_WORDS`` whitespace-separated words), and
    ``choices``: the next ``CHOICE_WORDS`` words as written and shuffled (``label`` = the index of the
    written order, alternating 0/1 so that always answering one side scores 50%)."""
    words = text.split()
    rng = random.Random(CHOICE_SEED)
    docs = []
    for n, pos in enumerate(range(MIN_CONTEXT_WORDS, len(words) - CHOICE_WORDS + 1, CHOICE_STRIDE)):
        true = words[pos:pos + CHOICE_WORDS]
        shuffled = list(true)
        while shuffled == true:
            rng.shuffle(shuffled)
        label = len(docs) % 2
        options = [" ".join(true), " ".join(shuffled)]  # lm-eval puts its target_delimiter " " before each
        if label == 1:
            options.reverse()
        docs.append({"context": " ".join(words[max(0, pos - CONTEXT_WORDS):pos]), "choices": options, "label": label})
    return docs


def to_jsonl(docs: list[dict]) -> str:
    return "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs)


def build(heldout: str) -> dict[Path, str]:
    """The JSONL files' contents built from the held-out text."""
    return {LAMBADA_FILE: to_jsonl(lambada_docs(heldout)), CHOICE_FILE: to_jsonl(choice_docs(heldout)),
            PPL_FILE: to_jsonl([{"text": heldout.strip()}])}


def main(argv: list[str] | None = None) -> int:
    from training.cli import EXIT_BAD_INPUT, OneLineParser

    parser = OneLineParser(prog="python -m training.eval_tasks", description="Rebuild the local lm-eval tasks' JSONL files.")
    parser.add_argument("--source", type=Path, help="the full the-verdict.txt: re-extract verdict_heldout.txt first")
    args = parser.parse_args(argv)
    if args.source is not None:
        if not args.source.is_file():
            print(f"error: --source: {args.source}: no such file", file=sys.stderr)
            return EXIT_BAD_INPUT
        HELDOUT_FILE.write_text(heldout_text(args.source.read_text(encoding="utf-8")), encoding="utf-8")
    heldout = HELDOUT_FILE.read_text(encoding="utf-8")
    for path, content in build(heldout).items():
        path.write_text(content, encoding="utf-8")
        print(f"{path.name}: {content.count(chr(10))} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
