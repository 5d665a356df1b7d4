"""How much memory a training step keeps for its backward pass, found by tracing it, not running it.

The activations saved between forward and backward are what makes a model's peak memory grow with
batch x context, and what nGPT's extra normalizations cost (see :mod:`models.ngpt_ops`). This module
traces one forward pass on fake tensors (``FakeTensorMode``: shapes and dtypes, no memory, no
compute), so it answers for any shape on any machine, a CPU included, in seconds:

* **eager**: every tensor autograd saves (``saved_tensors_hooks``), counted once per storage,
  parameters left out (they are alive anyway); the bf16 copies of the weights autocast makes are
  counted, as they are saved too.
* **compiled**: the tensors the forward graph hands to the backward graph after TorchInductor's own
  partitioner (``compile_fx``) has chosen what to save and what to recompute, again per storage and
  without the parameters. Nothing is code-generated: tracing stops once the forward graph is known.

Precision is that of GPU training: bf16 autocast with float32 weights (traced with the CPU autocast
rules, which agree with CUDA's for every op these models use). The result is a prediction of the
saved activations, not of the allocator's peak (the gradients, optimizer state and the transient
buffers of the backward pass come on top); on CUDA, ``python -m training.bench`` also measures
the real peak.
"""

from __future__ import annotations

import torch

from models import ModelConfig, build_model


class _Traced(Exception):
    """Raised by the recording compiler to stop compilation once the forward graph is known."""


def _inputs(config: ModelConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (batch, config.context_length)
    return (torch.randint(0, config.vocab_size, shape), torch.randint(0, config.vocab_size, shape))


def _autocast(bf16: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def saved_bytes_eager(config: ModelConfig, batch: int, bf16: bool = True, fused_norms: bool = True) -> int:
    """Bytes autograd keeps for the backward pass of one eager forward pass of ``batch`` sequences
    of ``config.context_length`` tokens (storages counted once, parameters excluded)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = build_model(config, fused_norms)
        idx, targets = _inputs(config, batch)
        params = {p.untyped_storage()._cdata for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage._cdata not in params:
                saved[storage._cdata] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), _autocast(bf16):
            model(idx, targets)
    return sum(saved.values())


def saved_bytes_compiled(config: ModelConfig, batch: int, bf16: bool = True, fused_norms: bool = True) -> int:
    """Bytes the ``torch.compile``-d (TorchInductor) forward pass saves for its backward pass, as
    Inductor's partitioner decides (storages counted once, parameters and inputs excluded)."""
    import torch._dynamo
    from torch._inductor.compile_fx import compile_fx
    from torch._subclasses.fake_tensor import FakeTensorMode

    found: dict[str, int] = {}

    def record(gm: torch.fx.GraphModule, example_inputs, **kwargs):  # noqa: ANN001, ANN003 - Inductor's hook
        if kwargs.get("is_backward"):  # pragma: no cover - tracing stops at the forward graph
            raise _Traced
        (outputs,) = [node.args[0] for node in gm.graph.nodes if node.op == "output"]
        storages: dict[int, int] = {}
        for node in outputs[2:]:  # (logits, loss, *saved for backward)
            if not isinstance(node, torch.fx.Node) or node.op == "placeholder":
                continue  # a parameter or an input: alive whatever the graph saves
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                storages[storage._cdata] = storage.nbytes()
        found["bytes"] = sum(storages.values())
        raise _Traced

    torch._dynamo.reset()
    with FakeTensorMode():
        model = build_model(config, fused_norms)
        idx, targets = _inputs(config, batch)
    compiled = torch.compile(model, backend=lambda gm, inputs: compile_fx(gm, inputs, inner_compile=record),
                             fullgraph=True)
    try:
        with _autocast(bf16):
            compiled(idx, targets)
    except Exception as err:  # Dynamo wraps the backend's exception
        if "bytes" not in found:
            raise RuntimeError(f"tracing the compiled forward pass failed: {err}") from err
    finally:
        torch._dynamo.reset()
    return found["bytes"]


def saved_activations(config: ModelConfig, batch: int, compiled: bool, bf16: bool = True,
                      fused_norms: bool = True) -> dict:
    """What one training step of ``batch`` sequences keeps in memory at the start of its backward
    pass, eager or compiled:

    * ``saved_activations_gib``: the activations saved for the backward pass;
    * ``saved_kib_per_token``: their growth per token (tracing 2 and 1 sequences, the difference
      divided by the context length, so fixed costs such as the bf16 weight copies drop out);
    * ``weights_adamw_gib``: float32 weights and AdamW's two moments, 12 bytes per parameter;
    * ``predicted_gib``: the sum of the two, a lower bound of the peak (gradients and the backward
      pass's transient buffers come on top).

    The saved bytes are exactly linear in the batch (the tests check it), so two traces serve any
    batch. ``fused_norms=False``: nGPT with plain-autograd normalizations (:class:`models.NGPT`)."""
    measure = saved_bytes_compiled if compiled else saved_bytes_eager
    one, two = measure(config, 1, bf16, fused_norms), measure(config, 2, bf16, fused_norms)
    saved = (one + (batch - 1) * (two - one)) / 2**30
    with torch.device("meta"):
        weights = 12 * build_model(config).num_params() / 2**30
    return {"saved_activations_gib": saved, "saved_kib_per_token": (two - one) / config.context_length / 1024,
            "weights_adamw_gib": weights, "predicted_gib": saved + weights}
