"""Every optimizer a run uses, built in one place (the trainer, resume, cooldown branches, fine-tuning and the
benchmark all call `build_optimizer`), and the one way a step's learning rate is set on it (`set_lr`).

`optim.name: adamw` (the default): AdamW on the model's own groups (`optimizer_groups`: weight decay on the
matrices and embeddings, none on vectors). This is the optimizer every AdamW checkpoint holds; its state dict
is torch's.

`optim.name: muon` (GPT only): Muon for the hidden matrices the model names (`hidden_matrices`: attention
q/k/v and output, the MLP's matrices) and AdamW for everything else (embeddings, output head, RMSNorm and
QK-norm weights) at its own peak rate `optim.adamw_lr`. Both follow the arm's schedule: at every step the
AdamW part gets `adamw_lr / lr` times Muon's scheduled rate.

Muon (Keller Jordan et al., 2024, https://kellerjordan.github.io/posts/muon/), per matrix W with gradient G,
momentum mu, learning rate lr and weight decay wd, as `torch.optim.Muon` computes it:

    B <- mu B + (1 - mu) G                                 momentum buffer (an exponential average)
    U <- (1 - mu) G + mu B   (Nesterov; else U <- B)
    O <- NS5(U)                                            ~ the orthogonal factor of U, in bfloat16
    W <- (1 - lr wd) W - lr k(W) O                         k = 0.2 sqrt(max(rows, cols)) (match_rms_adamw)
                                                               or sqrt(max(1, rows / cols)) (original)

with NS5 five Newton-Schulz iterations X <- a X + (b A + c A^2) X, A = X X^T, from X = U / ||U||_F
(a, b, c = 3.4445, -4.7750, 2.0315). One difference from `torch.optim.Muon`: a parameter that stacks several
matrices by rows (GPT's fused [W_q; W_k; W_v], SwiGLU's [W_u; W_v]) is orthogonalized matrix by matrix, as
the modded-nanogpt speedrun does with its separate q, k, v (and later batched qkvo) weights; torch's Muon
would orthogonalize the stacked 3d x d matrix as one. For a single matrix the arithmetic is torch's, op for
op (tests/test_optim.py compares the two bitwise where torch has `torch.optim.Muon`, from 2.9); this
module needs no torch newer than the project's floor.
"""

from __future__ import annotations

import math

import torch

from training.config import OptimConfig

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic, torch.optim.Muon's default
NS_EPS = 1e-7  # floor of ||U||_F before the division (torch.optim.Muon's eps)


def newton_schulz(update: torch.Tensor, steps: int) -> torch.Tensor:
    """About the orthogonal factor U V^T of a matrix U S V^T, by `steps` quintic Newton-Schulz iterations in
    bfloat16 (the coefficients trade convergence for speed: the singular values end near 1, not at 1).
    A tall matrix is iterated on its transpose, so the Gram matrix is the smaller one."""
    a, b, c = NS_COEFFICIENTS
    x = update.bfloat16()
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=NS_EPS)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x.T if tall else x


def lr_factor(rows: int, cols: int, adjust: str) -> float:
    """Muon's per-matrix rate multiplier: 0.2 sqrt(max(rows, cols)) gives the update AdamW's typical RMS
    (Moonshot, "Muon is Scalable for LLM Training", arXiv 2502.16982); sqrt(max(1, rows / cols)) is Keller
    Jordan's original (an update of spectral norm about lr sqrt(fan_out / fan_in))."""
    if adjust == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters (module docstring). Group keys: lr, weight_decay, momentum, nesterov,
    ns_steps, adjust_lr ("match_rms_adamw" or "original") and parts: each parameter of the group stacks
    `parts` matrices of equal size by rows and is orthogonalized matrix by matrix. State per parameter: its
    momentum buffer."""

    def __init__(self, params, lr: float, weight_decay: float, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, adjust_lr: str = "match_rms_adamw"):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, adjust_lr=adjust_lr, parts=1)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2 or p.shape[0] % group["parts"]:
                    raise ValueError(f"Muon needs matrices of {group['parts']} equal row blocks, got {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, parts = group["lr"], group["momentum"], group["parts"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                rows, cols = p.shape[0] // parts, p.shape[1]
                blocks = [newton_schulz(block, group["ns_steps"]) for block in update.split(rows)]
                ortho = blocks[0] if parts == 1 else torch.cat(blocks)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(ortho, alpha=-lr * lr_factor(rows, cols, group["adjust_lr"]))


class MuonWithAdamW:
    """Muon for the hidden matrices and AdamW for the other parameters, stepped, zeroed, saved and loaded as
    one optimizer. `param_groups` lists Muon's groups, then AdamW's; `set_lr` sets both from Muon's rate."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW, adamw_scale: float):
        self.muon, self.adamw, self.adamw_scale = muon, adamw, adamw_scale

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def set_lr(self, lr: float) -> None:
        for group in self.muon.param_groups:
            group["lr"] = lr
        for group in self.adamw.param_groups:
            group["lr"] = lr * self.adamw_scale

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_optimizer(model, cfg: OptimConfig, device: torch.device):
    """The optimizer of `model` for the arm's `optim` section, at its peak rates (the trainer sets each
    step's rate with `set_lr`)."""
    fused = device.type == "cuda"
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                 eps=cfg.eps, fused=fused)
    if cfg.name != "muon":
        raise ValueError(f"optim.name: unknown optimizer {cfg.name!r}")
    matrices = model.hidden_matrices()
    by_parts: dict[int, list[torch.nn.Parameter]] = {}
    for _, param, parts in matrices:
        by_parts.setdefault(parts, []).append(param)
    muon = Muon([{"params": params, "parts": parts} for parts, params in by_parts.items()], lr=cfg.lr,
                weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum, nesterov=cfg.muon_nesterov,
                ns_steps=cfg.muon_ns_steps, adjust_lr=cfg.muon_adjust_lr)
    hidden = {id(param) for _, param, _ in matrices}
    groups = [{**group, "params": [p for p in group["params"] if id(p) not in hidden]}
              for group in model.optimizer_groups(cfg.weight_decay)]
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.adamw_lr, betas=(cfg.beta1, cfg.beta2),
                              eps=cfg.eps, fused=fused)
    return MuonWithAdamW(muon, adamw, cfg.adamw_lr / cfg.lr)


def set_lr(optimizer, lr: float) -> None:
    """Set one step's scheduled rate: `lr` is `optim.lr` on the arm's schedule (training/schedule.py); with
    Muon, the AdamW part gets the same fraction of its own peak."""
    if isinstance(optimizer, MuonWithAdamW):
        optimizer.set_lr(lr)
        return
    for group in optimizer.param_groups:
        group["lr"] = lr
