"""Compare two MLflow child runs' metric curves value by value (a reproducibility check).

    python tools/compare_curves.py EXPERIMENT_A RUN_NAME_A EXPERIMENT_B RUN_NAME_B [--context 64]
                                   [--metrics val/loss,train/loss]

Reads MLFLOW_TRACKING_URI (else sqlite:///mlflow.db). A run is found by its experiment and run name (the
unit key, e.g. gpt-lr0.012-t32768-seed1; the newest FINISHED run of that name) and, with --context, its
model.context_length (needed in a context-length series: every length has a run of the same key). Prints, per metric, the
number of logged steps of each run and whether every value at every step is bitwise equal (float ==),
else the first differing step and the largest absolute difference. Exit code 0 when all are identical,
1 otherwise, 2 on a usage error (run not found).
"""

from __future__ import annotations

import argparse
import os
import sys


def _find(client, experiment: str, run_name: str, context: int | None):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no experiment {experiment!r}")
    query = f"attributes.run_name = '{run_name}'"
    if context is not None:
        query += f" and params.`model.context_length` = '{context}'"
    runs = client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])
    runs = [r for r in runs if r.info.status == "FINISHED"]
    where = "" if context is None else f" at context length {context}"
    if not runs:
        raise LookupError(f"no FINISHED run named {run_name!r}{where} in experiment {experiment!r}")
    contexts = {r.data.params.get("model.context_length") for r in runs}
    if len(contexts) > 1:
        raise LookupError(f"runs named {run_name!r} in {experiment!r} have context lengths {sorted(contexts)}: "
                          f"pick one with --context")
    return runs[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment_a")
    p.add_argument("run_a")
    p.add_argument("experiment_b")
    p.add_argument("run_b")
    p.add_argument("--context", type=int, default=None, help="model.context_length of both runs")
    p.add_argument("--metrics", default="val/loss,train/loss,train/grad_norm,lr")
    args = p.parse_args(argv)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    try:
        a = _find(client, args.experiment_a, args.run_a, args.context)
        b = _find(client, args.experiment_b, args.run_b, args.context)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    same = True
    for metric in [m for m in args.metrics.split(",") if m]:
        ha = {m.step: m.value for m in client.get_metric_history(a.info.run_id, metric)}
        hb = {m.step: m.value for m in client.get_metric_history(b.info.run_id, metric)}
        if not ha and not hb:
            print(f"{metric}: logged by neither run")
            continue
        diff = [s for s in sorted(set(ha) | set(hb)) if ha.get(s) != hb.get(s)]
        if not diff:
            print(f"{metric}: {len(ha)} steps, bitwise identical")
            continue
        same = False
        common = [s for s in set(ha) & set(hb)]
        largest = max((abs(ha[s] - hb[s]) for s in common), default=float("nan"))
        print(f"{metric}: DIFFERENT ({len(ha)} vs {len(hb)} steps; first difference at step {diff[0]}: "
              f"{ha.get(diff[0])} vs {hb.get(diff[0])}; largest |difference| {largest:.3g})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
