#!/usr/bin/env bash
# Serving benchmark: requests/s, aggregate tokens/s, p50/p99 TTFT and inter-token latency at 1,
# 8 and 32 concurrent streaming clients against `jarip serve` on loopback.
#   bench/serve/run.sh [MODEL_DIR] [bench.py options...]     (default model: runs/speedrun)
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-runs/speedrun}"
shift || true
cargo build --release -q -p jarip
exec python3 bench/serve/bench.py --model "$model" --bin target/release/jarip "$@"
