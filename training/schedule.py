"""Learning-rate schedules as functions of tokens seen (not steps), so budgets compare directly."""

from __future__ import annotations

import math

from training.config import OptimConfig


def lr_at(tokens: int, total_tokens: int, cfg: OptimConfig) -> float:
    """Learning rate after `tokens` training tokens of a `total_tokens` run.

    Linear warmup from 0 over `warmup_tokens`, then, down to `lr * min_lr_ratio` at `total_tokens`:
    cosine, linear, wsd (constant until the last `decay_fraction` of tokens, then linear), or constant.
    """
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if tokens < cfg.warmup_tokens:
        return peak * (tokens + 1) / (cfg.warmup_tokens + 1)
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "wsd":
        decay_start = total_tokens * (1.0 - cfg.decay_fraction)
        if tokens < decay_start:
            return peak
        progress = (tokens - decay_start) / max(total_tokens - decay_start, 1)
        return peak + (floor - peak) * min(progress, 1.0)
    progress = min((tokens - cfg.warmup_tokens) / max(total_tokens - cfg.warmup_tokens, 1), 1.0)
    if cfg.schedule == "linear":
        return peak + (floor - peak) * progress
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
