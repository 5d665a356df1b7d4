#!/usr/bin/env bash
# run_cpu_context_series.sh: the whole CPU context-length series of issue #18, resumable.
#
#   experiments/run_cpu_context_series.sh           # from anywhere; runs in the checkout's root
#   MLFLOW_TRACKING_URI=sqlite:////tmp/x.db experiments/run_cpu_context_series.sh   # another store
#
# 1. prepares shards/fineweb_legal with experiments/prepare_fineweb_legal.sh: from a local copy of the parquet
#    files in $DATGPT_DATA_DIR/fineweb/fineweb_legal_batches/ if there is one, else downloaded through `datasets`
#    (deterministic, ~5 s; the shards' SHA-256 is checked; a finished folder is left as it is);
# 2. runs experiments/cpu_context_64.yaml, _256.yaml, _1024.yaml in this order (experiments/run_series.sh,
#    which says how it resumes and skips) into ONE MLflow store
#    (default sqlite:///mlflow.db in the checkout, git-ignored) and one MLflow experiment,
#    cpu_context_series; each YAML has its own checkpoint.dir (checkpoints/cpu_context_<L>, git-ignored);
# 3. draws the figures and tables: python -m analysis figures --experiment cpu_context_series --baseline gpt
#    (into figures/cpu_context_series/, git-ignored); then the same for GPT + QK-norm (below).
#
# Resumable: run it again after an interruption. A YAML whose invocation finished (its
# checkpoints/cpu_context_<L>/cpu_context_series/*/invocation.json says "finished": true) is skipped; an
# unfinished one is resumed by the runner (finished units are not trained again, the interrupted unit
# continues from its checkpoint). To run a YAML again from scratch, delete checkpoints/cpu_context_<L>
# (its old runs stay in MLflow; the analysis keeps the newest run of each arm/seed/budget/context).
#
# Two passes, each over the three files: first the YAMLs' enabled arms (gpt, ngpt), then the strong
# baseline (GPT + QK-norm, enabled: false in the YAMLs) as one more invocation per file with --arms gpt_qk
# into the same experiment (its own lr search; checkpoint folder checkpoints/cpu_context_<L>_gpt_qk); the
# analysis uses every invocation's runs (the baseline stays gpt). The figures are drawn after each pass,
# so stopping during the second pass leaves a complete GPT-vs-nGPT family. PASSES="default" skips it.
#
# Environment: DATGPT_DATA_DIR (where the local copy is looked for), CONTEXTS (default "64 256 1024"), PASSES
# (default "default gpt_qk"; a pass other than "default" is an --arms list), RUNNER_ARGS (extra runner
# arguments), NICE (niceness, default 0).
set -euo pipefail
cd "$(dirname "$0")/.."

experiments/prepare_fineweb_legal.sh
yamls=()
for L in ${CONTEXTS:-64 256 1024}; do yamls+=("experiments/cpu_context_$L.yaml"); done
PASSES="${PASSES:-default gpt_qk}" exec experiments/run_series.sh cpu_context_series "${yamls[@]}"
