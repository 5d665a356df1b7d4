#!/usr/bin/env bash
# run_bytes_family.sh: the byte-level family of docs/results.md (issue #28), resumable.
#
#   experiments/run_bytes_family.sh                  # from anywhere; runs in the checkout's root
#   MLFLOW_TRACKING_URI=sqlite:////tmp/x.db experiments/run_bytes_family.sh   # another store (default ./mlflow.db)
#
# 1. prepares shards/fineweb_bytes (experiments/prepare_fineweb_legal.sh bytes: the 2,800 FineWeb documents as
#    UTF-8 bytes, from $DATGPT_DATA_DIR/fineweb/fineweb_legal_batches/ or downloaded; SHA-256 checked);
# 2. question 1, nGPT against three baselines: experiments/bytes_shakespeare.yaml (gpt, gpt_qk, gpt_muon, ngpt on
#    Tiny Shakespeare as bytes at nanoGPT's setting) into the MLflow experiment bytes_shakespeare, then its
#    figures (figures/bytes_shakespeare/);
# 3. question 2, the factor against context length: experiments/bytes_fineweb_64.yaml, _256.yaml, _1024.yaml
#    (gpt and ngpt) into the MLflow experiment bytes_fineweb, then its figures (figures/bytes_fineweb/).
# Each step is experiments/run_series.sh (which says how a finished YAML is skipped and an unfinished one
# resumed). FINEWEB_PASSES (default "default") adds passes over the FineWeb files, e.g.
# FINEWEB_PASSES="default gpt_qk,gpt_muon" trains the strong baselines at every context too (about +90 %).
#
# Environment: DATGPT_DATA_DIR, FINEWEB_PASSES, RUNNER_ARGS, NICE (as in run_series.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

experiments/prepare_fineweb_legal.sh bytes
PASSES=default experiments/run_series.sh bytes_shakespeare experiments/bytes_shakespeare.yaml
PASSES="${FINEWEB_PASSES:-default}" experiments/run_series.sh bytes_fineweb \
    experiments/bytes_fineweb_64.yaml experiments/bytes_fineweb_256.yaml experiments/bytes_fineweb_1024.yaml
