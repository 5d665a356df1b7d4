"""Text generation from a trained model, with a KV cache (`LanguageModel.generate`).

    python -m training.sample --checkpoint SPEC | --run RUN_ID --prompt TEXT [--max-new-tokens 100]
                              [--temperature 0.8] [--top-k 40] [--seed 0] [--num-samples 1]
                              [--device auto|cpu|cuda] [--checkpoint-dir checkpoints]

`--checkpoint` takes what `init_from` takes (training/pretrained.py): a checkpoint file, an arm's
checkpoint folder, or `EXPERIMENT/ARM[-seedN]` under `--checkpoint-dir` (seed 0 unless named).
`--run` takes an MLflow child run id: its checkpoint (found under `--checkpoint-dir`, else through
the run's `datgpt.checkpoint` tag), else the model logged to the run (`runs:/RUN_ID/model`). The text
(prompt and continuation) goes to stdout, what was loaded to stderr; bad input is one line on stderr
and exit code 2. The same seed gives the same text on the same device.

At the end of each child run the session logs `samples/samples.txt` (`sample_report`): the fixed
prompts below, 32 new tokens each, temperature 0.8, top-k 40, seed i for prompt i (0, 1, 2): on CPU,
exactly what `python -m training.sample --run RUN_ID --prompt P --max-new-tokens 32 --seed i` prints (on
CUDA the run samples under the training precision, bf16 autocast by default, and the command in float32).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from training.cli import OneLineParser, add_model_options
from training.data.tokenizer import TokenizerError, get_encoding
from training.pretrained import RUN_ID, PretrainedError, resolve

SAMPLE_PROMPTS = ("I had always thought", "The king said", "It was")
SAMPLE_NEW_TOKENS = 32
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 40
SAMPLE_SEED = 0


class SampleError(ValueError):
    """Bad input to the sampler; one line."""


def generate_text(model, prompt: str, *, tokenizer: str = "gpt2", max_new_tokens: int = SAMPLE_NEW_TOKENS,
                  temperature: float = SAMPLE_TEMPERATURE, top_k: int | None = SAMPLE_TOP_K,
                  seed: int = SAMPLE_SEED, num_samples: int = 1, device: torch.device | str = "cpu",
                  autocast=None) -> list[str]:
    """`num_samples` continuations of `prompt` (each returned with the prompt in front).

    An empty prompt starts from the end-of-text token. Only the tokenizer's ids are sampled (not the
    padded rows of the embedding). `autocast` is a context such as `Runtime.autocast` (default: none)."""
    enc = get_encoding(tokenizer)
    device = torch.device(device)
    prompt_ids = enc.encode_ordinary(prompt) or [enc.eot_token]
    idx = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with autocast if autocast is not None else contextlib.nullcontext():
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator,
                             vocab_size=min(enc.n_vocab, model.config.vocab_size))
    return [prompt + enc.decode(row[len(prompt_ids):].tolist()) for row in out.cpu()]


def sample_report(model, tokenizer: str, device: torch.device, autocast=None, header: str = "") -> str:
    """The text logged as `samples/samples.txt` at the end of a child run."""
    lines = [f"# {header}" if header else "#",
             f"# {SAMPLE_NEW_TOKENS} new tokens per prompt; temperature {SAMPLE_TEMPERATURE}, top-k {SAMPLE_TOP_K}; "
             f"python -m training.sample --prompt P --max-new-tokens {SAMPLE_NEW_TOKENS} --seed S repeats one", ""]
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        seed = SAMPLE_SEED + i
        (text,) = generate_text(model, prompt, tokenizer=tokenizer, seed=seed, device=device, autocast=autocast)
        lines += [f"## prompt {i + 1}: {prompt!r} (seed {seed})", text, ""]
    return "\n".join(lines)


def _load(args) -> tuple[torch.nn.Module, str, str]:
    """The model, a line saying where it came from, and its tokenizer."""
    if args.checkpoint is not None:
        pretrained = resolve(args.checkpoint, args.checkpoint_dir, seed=0)
    else:
        run_id = args.run.strip()
        if not RUN_ID.match(run_id):
            raise SampleError(f"--run: {run_id!r} is not an MLflow run id (32 hex digits)")
        try:
            pretrained = resolve(run_id, args.checkpoint_dir)
        except PretrainedError as err:
            model = logged_model(run_id)
            if model is None:
                raise SampleError(f"--run: {err}; nor has the run a logged model") from None
            return model, f"MLflow model runs:/{run_id}/model", run_tokenizer(run_id)
    model = pretrained.build_model()
    where = f"{pretrained.path} (step {pretrained.step}, {pretrained.tokens:,} tokens"
    where += f"; arm {pretrained.arm} seed {pretrained.seed})" if pretrained.arm else ")"
    return model, where, pretrained.tokenizer


def run_tokenizer(run_id: str) -> str:
    """The tokenizer an MLflow child run trained with: its `tokenizer` param, or gpt2 for a run logged before
    that param existed (every such run used GPT-2). Called after the run's model loaded, so the store answers."""
    from mlflow import MlflowClient

    return MlflowClient().get_run(run_id).data.params.get("tokenizer", "gpt2")


def logged_model(run_id: str):
    """The model logged to an MLflow run (`runs:/RUN_ID/model`), or None."""
    try:
        import mlflow
        import mlflow.pytorch

        from analysis.errors import TrackingStoreError
        from analysis.store import check_local_store

        try:
            check_local_store(mlflow.get_tracking_uri())
        except TrackingStoreError:
            return None
        return mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu")
    except Exception:
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m training.sample",
                           description="Generate text from a datgpt checkpoint or MLflow run (KV-cached).")
    add_model_options(parser, run_help="an MLflow child run id")
    parser.add_argument("--prompt", required=True, help="text to continue ('' starts from end-of-text)")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default 100)")
    parser.add_argument("--temperature", type=float, default=SAMPLE_TEMPERATURE,
                        help=f"softmax temperature; 0 = greedy (default {SAMPLE_TEMPERATURE})")
    parser.add_argument("--top-k", type=int, default=SAMPLE_TOP_K,
                        help=f"sample among the k most likely tokens; 0 = all (default {SAMPLE_TOP_K})")
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED, help="sampling seed (default 0)")
    parser.add_argument("--num-samples", type=int, default=1, help="continuations of the prompt (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.max_new_tokens < 1:
            raise SampleError(f"--max-new-tokens: must be at least 1, got {args.max_new_tokens}")
        if not args.temperature >= 0:
            raise SampleError(f"--temperature: must be >= 0, got {args.temperature}")
        if args.top_k < 0:
            raise SampleError(f"--top-k: must be >= 0, got {args.top_k}")
        if args.num_samples < 1:
            raise SampleError(f"--num-samples: must be at least 1, got {args.num_samples}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SampleError("--device: cuda requested but torch sees no CUDA device")
        device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                              else "cpu")
        try:
            model, where, tokenizer = _load(args)
        except PretrainedError as err:
            raise SampleError(f"--checkpoint: {err}") from None
        print(f"model: {where}; {tokenizer} tokenizer, {args.max_new_tokens} new tokens, temperature "
              f"{args.temperature}, top-k {args.top_k or 'off'}, seed {args.seed}, {device.type}", file=sys.stderr)
        texts = generate_text(model.to(device), args.prompt, tokenizer=tokenizer, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_k=args.top_k or None, seed=args.seed,
                              num_samples=args.num_samples, device=device)
    except (SampleError, TokenizerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n\n---\n\n".join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
