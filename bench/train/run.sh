#!/usr/bin/env bash
# Training-step benchmark: PyTorch fp32 reference vs jarip (same model, shape and optimizer),
# run one after the other on this machine; prints ms/step, tokens/s, MFU, peak RSS and the ratio.
#
#   bench/train/run.sh [--depth 6 --vocab 8192 --seq-len 256 --batch 8 --steps 10 --warmup 2]
#
# Needs: python3 with torch (pip install -r bench/train/requirements.txt), cargo.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARGS=("$@")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "building jarip bench_train (release)..." >&2
cargo build --release -q -p jarip-train --example bench_train
BIN=target/release/examples/bench_train

echo "running PyTorch reference..." >&2
python3 bench/train/train_ref.py "${ARGS[@]}" > "$OUT/torch.json"
echo "running jarip (fused kernels)..." >&2
"$BIN" "${ARGS[@]}" --kernels fused > "$OUT/jarip.json"
if [[ "${BENCH_COMPOSED:-0}" == 1 ]]; then
  echo "running jarip (composed candle ops)..." >&2
  "$BIN" "${ARGS[@]}" --kernels composed > "$OUT/composed.json"
fi

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = [json.load(open(os.path.join(out, f))) for f in ("torch.json", "jarip.json", "composed.json") if os.path.exists(os.path.join(out, f))]
print(f"{'implementation':42} {'ms/step':>9} {'tokens/s':>9} {'MFU':>6} {'peak RSS':>9}")
for r in rows:
    print(f"{r['impl']:42} {r['ms_per_step']:9.0f} {r['tokens_per_s']:9.0f} {100*r['mfu']:5.1f}% {r['peak_rss_mb']:7.0f} MB")
t, j = rows[0], rows[1]
print(f"params {j['params']:,} (torch {t['params']:,}); {j['gflops_per_step']:.1f} GFLOP/step")
print(f"jarip / PyTorch: tokens/s {j['tokens_per_s'] / t['tokens_per_s']:.2f}x, peak RSS {j['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
PY
