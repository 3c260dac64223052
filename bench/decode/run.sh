#!/usr/bin/env bash
# Decode tokens/s at batch 1 and 8 for a trained model (optional) and a ~100M-parameter random
# model, next to the memory-bandwidth bound measured in the same run.
#   bench/decode/run.sh [MODEL_DIR]      e.g. bench/decode/run.sh runs/speedrun/sft
set -euo pipefail
cd "$(dirname "$0")/../.."
args=()
if [ $# -ge 1 ]; then args+=(--model "$1"); fi
cargo run --release -q -p jarip-infer --example decode_bench -- "${args[@]}" --steps "${STEPS:-32}"
