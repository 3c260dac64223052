#!/usr/bin/env bash
# Training-step benchmark: PyTorch fp32 and bf16-autocast references vs jarip (same model, shape
# and optimizer), run one after the other on this machine; prints ms/step, tokens/s, MFU (all rows
# against the machine's measured fp32 peak), peak RSS and the ratios. BENCH_TORCH_BF16=0 skips
# the autocast row.
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
if [[ "${BENCH_TORCH_BF16:-1}" == 1 ]]; then
  echo "running PyTorch bf16 autocast..." >&2
  python3 bench/train/train_ref.py "${ARGS[@]}" --bf16 > "$OUT/torch_bf16.json"
fi
echo "running jarip (fused kernels)..." >&2
"$BIN" "${ARGS[@]}" --kernels fused > "$OUT/jarip.json"
if [[ "${BENCH_COMPOSED:-0}" == 1 ]]; then
  echo "running jarip (composed candle ops)..." >&2
  "$BIN" "${ARGS[@]}" --kernels composed > "$OUT/composed.json"
fi

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
names = ("torch.json", "torch_bf16.json", "jarip.json", "composed.json")
rows = {f: json.load(open(os.path.join(out, f))) for f in names if os.path.exists(os.path.join(out, f))}
# One denominator for every row: the fp32 FMA peak jarip measured on this machine (cached per CPU).
peak = rows["jarip.json"].get("peak_gflops")
print(f"MFU against this machine's measured fp32 peak: {peak:.1f} GFLOP/s" if peak else "MFU: see each row")
print(f"{'implementation':46} {'ms/step':>9} {'tokens/s':>9} {'MFU':>6} {'peak RSS':>9}")
for r in rows.values():
    mfu = r["gflops_per_step"] / (r["ms_per_step"] / 1e3) / peak if peak else r["mfu"]
    print(f"{r['impl']:46} {r['ms_per_step']:9.0f} {r['tokens_per_s']:9.0f} {100*mfu:5.1f}% {r['peak_rss_mb']:7.0f} MB")
t, j = rows["torch.json"], rows["jarip.json"]
if "torch_bf16.json" in rows:
    b = rows["torch_bf16.json"]
    print(f"jarip fp32 / PyTorch bf16 autocast: tokens/s {j['tokens_per_s'] / b['tokens_per_s']:.2f}x, peak RSS {j['peak_rss_mb'] / b['peak_rss_mb']:.2f}x")
print(f"params {j['params']:,} (torch {t['params']:,}); {j['gflops_per_step']:.1f} GFLOP/step")
print(f"jarip / PyTorch: tokens/s {j['tokens_per_s'] / t['tokens_per_s']:.2f}x, peak RSS {j['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
PY
