#!/usr/bin/env bash
# prepare_fineweb_legal.sh: the token shards the FineWeb CPU experiments train on, byte for byte, on any machine:
# shards/fineweb_legal (GPT-2 BPE: experiments/fineweb_cpu.yaml and the cpu_context_*.yaml family) or
# shards/fineweb_bytes (UTF-8 bytes: the bytes_fineweb_*.yaml family). docs/results.md uses both.
#
#   experiments/prepare_fineweb_legal.sh            # GPT-2: from anywhere; writes into the checkout's shards/
#   experiments/prepare_fineweb_legal.sh bytes      # the same documents as bytes (--val-tokens 1e6)
#
# The documents: 2,800 FineWeb sample-10BT documents, the 28 parquet files data/batches/batch_000001.parquet ..
# batch_000028.parquet (12 MB) of GitHub NoeFlandre/fineweb-legal at commit 7f540ba (a FILTERED subset; what
# it is and why these 28 files: docs/data.md). They are tokenized by the project's own prepare command:
#
# 1. offline, from a local copy of those files in $DATGPT_DATA_DIR/fineweb/fineweb_legal_batches/ (default
#    ~/.cache/datgpt), when that folder exists:
#      python -m training.data prepare "$DATGPT_DATA_DIR/fineweb/fineweb_legal_batches" \
#             --out shards/fineweb_legal --val-tokens 2e5
# 2. else with internet, streamed through `datasets` (its parquet builder) from the commit's raw URLs:
#      python -m training.data prepare --hf parquet --data-files \
#             https://raw.githubusercontent.com/NoeFlandre/fineweb-legal/<commit>/data/batches/batch_0000{01..28}.parquet \
#             --out shards/fineweb_legal --val-tokens 2e5
#
# (with `bytes`: --tokenizer bytes --out shards/fineweb_bytes --val-tokens 1e6). Both sources give the same
# shards (GPT-2: 4,164,413 training and 200,367 validation tokens; bytes: 18,456,621 and 1,002,269); the script
# then checks their SHA-256 and stops with exit code 2 if they differ (e.g. a local folder holding other files
# too). A finished folder is left as it is (and checked); an interrupted prepare continues. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

COMMIT=7f540baa1a624e3c4d4a9f2fb0f207014eff227c
URL="https://raw.githubusercontent.com/NoeFlandre/fineweb-legal/$COMMIT/data/batches"
LOCAL="${DATGPT_DATA_DIR:-$HOME/.cache/datgpt}/fineweb/fineweb_legal_batches"
TOKENIZER="${1:-gpt2}"
case "$TOKENIZER" in
    gpt2) OUT=shards/fineweb_legal; VAL=2e5 ;;
    bytes) OUT=shards/fineweb_bytes; VAL=1e6 ;;
    *) echo "error: prepare_fineweb_legal.sh: tokenizer must be gpt2 or bytes, got '$TOKENIZER'" >&2; exit 2 ;;
esac

if [ -d "$LOCAL" ]; then
    echo "prepare_fineweb_legal: from the local copy $LOCAL"
    python -m training.data prepare "$LOCAL" --tokenizer "$TOKENIZER" --out "$OUT" --val-tokens "$VAL" --no-progress
else
    echo "prepare_fineweb_legal: no $LOCAL; streaming the 28 files from github.com/NoeFlandre/fineweb-legal at $COMMIT"
    files=()
    for i in $(seq -f "%06g" 1 28); do files+=("$URL/batch_$i.parquet"); done
    python -m training.data prepare --hf parquet --data-files "${files[@]}" --tokenizer "$TOKENIZER" --out "$OUT" \
        --val-tokens "$VAL" --no-progress
fi

python - "$OUT" "$TOKENIZER" <<'EOF'
import hashlib
import sys
from pathlib import Path

out = Path(sys.argv[1])
expected = {  # the shards of docs/results.md
    "gpt2": {"val_000000.bin": "09489313a652c9abd8dd1fa586673db0445f4e56a7e3a4e09596e7984c75c0a8",
             "train_000000.bin": "97584feea1e2af5f58bbe2e479c4101705970689096a6563244d89b26236804d"},
    "bytes": {"val_000000.bin": "88e76afe333beb91430f05cda07720e67c3b350a4fc3974babaa49e12464d617",
              "train_000000.bin": "c995f65e85fea91977b6ce40aad4645ab8762f90dd8c64631ccc1c77e26ead82"},
}[sys.argv[2]]
for name, want in expected.items():
    got = hashlib.sha256((out / name).read_bytes()).hexdigest() if (out / name).is_file() else "missing"
    if got != want:
        sys.exit(print(f"error: {out / name}: SHA-256 {got}, expected {want}: not the shards of the FineWeb "
                       f"experiments (was the source folder changed?)", file=sys.stderr) or 2)
print(f"{out}: the expected shards (SHA-256 checked)")
EOF
