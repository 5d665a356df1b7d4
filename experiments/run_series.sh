#!/usr/bin/env bash
# run_series.sh: train a family of experiment YAMLs that log into one MLflow experiment, resumably, and draw its
# figures. The CPU families of docs/results.md are run with it (run_cpu_context_series.sh, run_bytes_family.sh).
#
#   experiments/run_series.sh EXPERIMENT YAML [YAML ...]     # from anywhere; runs in the checkout's root
#   MLFLOW_TRACKING_URI=sqlite:////tmp/x.db experiments/run_series.sh ...   # another store (default ./mlflow.db)
#
# For each pass of $PASSES (default "default"), each YAML in the order given: `python runner.py YAML --no-progress`
# (pass "default": the YAML's enabled arms, into its checkpoint.dir), or with `--arms PASS --set
# checkpoint.dir=<checkpoint.dir>_<PASS>` for a pass that names arms (e.g. "gpt_qk" or "gpt_qk,gpt_muon": arms
# defined with enabled: false, each with its own lr search, into the same MLflow experiment). After each pass:
# python -m analysis figures --experiment EXPERIMENT --baseline gpt (into figures/EXPERIMENT/; a --arms pass tags
# its parent run with its own baseline, so the baseline is named), so stopping during a later pass leaves the
# earlier passes' complete figures.
#
# Resumable: run it again after an interruption. A YAML whose invocation finished (an invocation.json under its
# checkpoint folder says "finished": true) is skipped; an unfinished one is resumed by the runner (finished units
# are not trained again, the interrupted unit continues from its last checkpoint). To run a YAML again from
# scratch, delete its checkpoint folder (its old runs stay in MLflow; the analysis keeps the newest run of each
# arm/seed/budget/context).
#
# Environment: PASSES, RUNNER_ARGS (extra runner arguments for every YAML), NICE (niceness, default 0).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: experiments/run_series.sh EXPERIMENT YAML [YAML ...]" >&2
    exit 2
fi
experiment="$1"
shift

export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
NICE="${NICE:-0}"
log() { echo "[$(date -u +%FT%TZ)] $*"; }
log "$experiment: tracking store $MLFLOW_TRACKING_URI; python $(python -c 'import sys; print(sys.version.split()[0])'), torch $(python -c 'import torch; print(torch.__version__)'); $(nproc --all) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"

for pass in ${PASSES:-default}; do
    for yaml in "$@"; do
        ckpt=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["checkpoint"]["dir"])' "$yaml")
        args=()
        label="$yaml"
        if [ "$pass" != default ]; then
            ckpt="${ckpt}_${pass//,/_}"
            args=(--arms "$pass" --set "checkpoint.dir=$ckpt")
            label="$yaml --arms $pass"
        fi
        if grep -ls '"finished": true' "$ckpt"/*/*/invocation.json >/dev/null 2>&1; then
            log "$label: finished earlier ($ckpt), skipped"
            continue
        fi
        log "$label: start (load $(cut -d' ' -f1-3 /proc/loadavg))"
        # shellcheck disable=SC2086
        nice -n "$NICE" python runner.py "$yaml" --no-progress "${args[@]}" ${RUNNER_ARGS:-}
        log "$label: done (load $(cut -d' ' -f1-3 /proc/loadavg))"
    done
    log "figures ($pass pass): python -m analysis figures --experiment $experiment --baseline gpt"
    python -m analysis figures --experiment "$experiment" --baseline gpt
done
log "$experiment: all done"
