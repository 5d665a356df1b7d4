"""Expand an experiment's `sweep` into units of work: one (arm, budget, learning rate, method, seed) each.

A unit is one MLflow child run and one checkpoint folder (`<invocation>/<unit key>/`). Without a
`sweep` section there is one unit per (arm, seed), keyed `<arm>-seed<seed>` as before sweeps existed.

Stages:

1. **lr_search** (only with `sweep.lr`): each arm with a grid trains every learning rate of it at
   `sweep.lr_budget` (default: the smallest budget) with `sweep.lr_seeds` (default: the first seed).
2. **main**: every arm trains every budget and seed with its chosen learning rate (the grid's best by
   mean final validation loss, `analysis.sweeps.select_lr`); units identical to a search unit are the
   same unit and are not trained again.

Budget methods (`sweep.method`):

* **full**: one run per budget, each with the arm's own schedule over its whole budget (the nGPT
  paper's method).
* **cooldown**: the arm with a WSD schedule (warmup, constant, linear decay over the last
  `optim.decay_fraction`): the largest budget is trained in full (the *trunk*) and saves a branch
  checkpoint where each smaller budget's decay starts; each smaller budget is a *branch* that loads it
  and trains only its own decay. Data order and learning rate are pure functions of the step and the
  tokens, so a branch is the same computation as a full WSD run of its budget, for a fraction of it.
* **both**: the two side by side, for the report's cooldown-versus-full comparison.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from analysis.record import METHOD_COOLDOWN, METHOD_FULL, STAGE_MAIN, STAGE_SEARCH
from training.config import ArmConfig, ExperimentConfig
from training.schedule import lr_at


@dataclass
class Unit:
    """One child run: an arm resolved for its budget, learning rate and schedule, and one seed."""

    arm: ArmConfig  # the arm with train.tokens, optim.lr (and optim.schedule for cooldowns) set
    seed: int
    key: str  # checkpoint folder and MLflow run name
    stage: str = STAGE_MAIN
    method: str = METHOD_FULL
    branch_of: str | None = None  # a cooldown branch: the trunk unit's key ...
    branch_step: int | None = None  # ... and the trunk step it starts from
    branch_steps: list[int] = field(default_factory=list)  # a trunk: the steps it saves branch checkpoints at

    @property
    def label(self) -> str:
        """How the terminal names it: `gpt seed 0`, or the key of a sweep unit."""
        plain = f"{self.arm.name}-seed{self.seed}"
        return f"{self.arm.name} seed {self.seed}" if self.key == plain else self.key

    @property
    def budget(self) -> int:
        return self.arm.train.tokens

    @property
    def lr(self) -> float:
        return self.arm.optim.lr


def unit_key(arm: str, seed: int, *, lr: float | None = None, budget: int | None = None,
             cooldown: bool = False) -> str:
    """`gpt-seed0`; with sweep dimensions `gpt-lr0.006-t32768-wsd-seed0` (only the swept ones appear)."""
    parts = [arm]
    if lr is not None:
        parts.append(f"lr{lr:g}")
    if budget is not None:
        parts.append(f"t{budget}")
    if cooldown:
        parts.append("wsd")
    return "-".join(parts + [f"seed{seed}"])


def budgets_of(cfg: ExperimentConfig, arm: ArmConfig) -> list[int]:
    return list(cfg.sweep.budgets) if cfg.sweep.budgets else [arm.train.tokens]


def search_seeds(cfg: ExperimentConfig) -> list[int]:
    """`sweep.lr_seeds` that are still in `seeds` (after --seeds), else the first seed."""
    chosen = [s for s in (cfg.sweep.lr_seeds or []) if s in cfg.seeds]
    return chosen or [cfg.seeds[0]]


def search_budgets(cfg: ExperimentConfig, arm: ArmConfig) -> list[int]:
    budgets = budgets_of(cfg, arm)
    if cfg.sweep.lr_budget == "each":
        return budgets
    if isinstance(cfg.sweep.lr_budget, int):
        return [cfg.sweep.lr_budget]
    return [budgets[0]]


def _resolved(arm: ArmConfig, *, tokens: int, lr: float, schedule: str | None = None) -> ArmConfig:
    out = copy.deepcopy(arm)
    out.train.tokens = tokens
    out.optim.lr = lr
    if schedule is not None:
        out.optim.schedule = schedule
    return out


def _unit(cfg: ExperimentConfig, arm: ArmConfig, seed: int, *, budget: int, lr: float, cooldown: bool,
          stage: str = STAGE_MAIN) -> Unit:
    key = unit_key(arm.name, seed, lr=lr if arm.name in cfg.sweep.lr else None,
                   budget=budget if cfg.sweep.budgets else None, cooldown=cooldown)
    resolved = _resolved(arm, tokens=budget, lr=lr, schedule="wsd" if cooldown else None)
    return Unit(resolved, seed, key, stage, METHOD_COOLDOWN if cooldown else METHOD_FULL)


def grid_arms(cfg: ExperimentConfig) -> list[ArmConfig]:
    """The arms (of those selected with --arms) that have a learning-rate grid."""
    return [a for a in cfg.arms if a.name in cfg.sweep.lr]


def search_units(cfg: ExperimentConfig) -> list[Unit]:
    """Stage 1: every grid learning rate of every arm with a grid, at the search budget(s) and seeds."""
    units = []
    for seed in search_seeds(cfg):
        for arm in grid_arms(cfg):
            budgets = budgets_of(cfg, arm)
            for budget in search_budgets(cfg, arm):
                for lr in cfg.sweep.lr[arm.name]:
                    cooldown = cfg.sweep.method == "cooldown"
                    unit = _unit(cfg, arm, seed, budget=budget, lr=lr, cooldown=cooldown, stage=STAGE_SEARCH)
                    if cooldown and budget == budgets[-1]:  # it may become the trunk: save its branch points
                        same_lr = {(arm.name, b): lr for b in [None, *budgets]}
                        unit.branch_steps = cooldown_family(cfg, arm, seed, budgets, same_lr)[0].branch_steps
                    units.append(unit)
    return units


def chosen_lr(cfg: ExperimentConfig, arm: ArmConfig, budget: int, best: dict[tuple[str, int | None], float]) -> float:
    """The learning rate arm trains `budget` with: the search's choice (per budget with lr_budget: each)."""
    if arm.name not in cfg.sweep.lr:
        return arm.optim.lr
    return best[(arm.name, budget if cfg.sweep.lr_budget == "each" else None)]


def main_units(cfg: ExperimentConfig, best: dict[tuple[str, int | None], float] | None = None) -> list[Unit]:
    """Stage 2: every arm, seed and budget (per method) at the chosen learning rates.

    `best` maps (arm, budget) -- or (arm, None) when one learning rate serves every budget -- to the
    chosen learning rate; arms without a grid keep their `optim.lr`. Trunks come before their branches.
    """
    best = best or {}
    methods = {"full": [False], "cooldown": [True], "both": [False, True]}[cfg.sweep.method]
    units = []
    for seed in cfg.seeds:
        for arm in cfg.arms:
            budgets = budgets_of(cfg, arm)
            for cooldown in methods:
                if not cooldown:
                    units += [_unit(cfg, arm, seed, budget=b, lr=chosen_lr(cfg, arm, b, best), cooldown=False)
                              for b in budgets]
                    continue
                units += cooldown_family(cfg, arm, seed, budgets, best)
    return units


def cooldown_family(cfg: ExperimentConfig, arm: ArmConfig, seed: int, budgets: list[int],
                    best: dict[tuple[str, int | None], float]) -> list[Unit]:
    """A WSD trunk at the largest budget and a branch per smaller budget.

    With a learning rate per budget (lr_budget: each) budgets that chose different rates cannot share
    a trunk: each group of budgets with one rate gets its own trunk.
    """
    groups: dict[float, list[int]] = {}
    for budget in budgets:
        groups.setdefault(chosen_lr(cfg, arm, budget, best), []).append(budget)
    units = []
    for lr, group in groups.items():
        trunk = _unit(cfg, arm, seed, budget=max(group), lr=lr, cooldown=True)
        branches = []
        for budget in sorted(group)[:-1]:
            branch = _unit(cfg, arm, seed, budget=budget, lr=lr, cooldown=True)
            step = branch_point(branch.arm, trunk.arm)
            if step > 0:  # no shared step (decay over the whole budget): it is trained in full
                branch.branch_of, branch.branch_step = trunk.key, step
                trunk.branch_steps.append(step)
            branches.append(branch)
        units += [trunk, *branches]
    return units


def branch_point(short: ArmConfig, long: ArmConfig) -> int:
    """The last step of `long`'s run after which `short`'s run has had the same learning rates.

    Step s uses `lr_at((s - 1) * tokens_per_step, steps * tokens_per_step)`; both runs agree on every
    step up to the returned one (warmup and the constant phase), so a branch loading `long`'s state
    after that step and training on with `short`'s schedule is `short`'s full run.
    """
    tokens_per_step = short.tokens_per_step()
    if tokens_per_step != long.tokens_per_step():
        raise ValueError("a cooldown branch needs the trunk's tokens per step")
    short_total = short.steps() * tokens_per_step
    long_total = long.steps() * tokens_per_step
    step = 0
    while step < short.steps() and (lr_at(step * tokens_per_step, short_total, short.optim)
                                    == lr_at(step * tokens_per_step, long_total, long.optim)):
        step += 1
    return min(step, short.steps() - 1)  # the branch trains at least its last step (and evaluates it)


def universe(cfg: ExperimentConfig) -> dict[str, Unit]:
    """Every unit the sweep could train, whatever learning rates the search picks (for resume checks)."""
    units = {u.key: u for u in search_units(cfg)}
    grids = {a.name: cfg.sweep.lr.get(a.name, [a.optim.lr]) for a in cfg.arms}
    for arm in cfg.arms:
        for lr in grids[arm.name]:
            one = copy.deepcopy(cfg)
            one.arms = [arm]
            keys = [(arm.name, b) for b in budgets_of(cfg, arm)] + [(arm.name, None)]
            units.update({u.key: u for u in main_units(one, {k: lr for k in keys})})
    return units
