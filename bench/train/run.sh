#!/usr/bin/env bash
# Training-step benchmark, side by side on this machine: PyTorch fp32, PyTorch bf16 autocast,
# jarip fp32 and jarip bf16 (AVX512-BF16 where the CPU has it; plus jarip bf16 on AMX where the
# CPU has AMX) — the same model, shape and optimizer — repeated BENCH_REPEATS times (default 3)
# in alternating order, since PyTorch varies ±10 % between runs. One row per implementation:
# median ms/step and tokens/s over the repeats (with their range), MFU against the machine's
# measured fp32 peak (the common denominator; the bf16 dot-product peak is printed beside it),
# peak RSS (largest), then the ratios. BENCH_TORCH_BF16=0 skips the autocast row,
# BENCH_COMPOSED=1 adds jarip's composed candle ops.
#
#   bench/train/run.sh [--depth 6 --vocab 8192 --seq-len 256 --batch 8 --steps 10 --warmup 2]
#
# Needs: python3 with torch (pip install -r bench/train/requirements.txt), cargo.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARGS=("$@")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
REPEATS=${BENCH_REPEATS:-3}

echo "building jarip bench_train (release)..." >&2
cargo build --release -q -p jarip-train --example bench_train
BIN=target/release/examples/bench_train

# Which jarip bf16 rows this CPU runs (bf16 falls back to fp32 with a notice without AVX512-BF16).
JARIP_ROWS=("fp32:--precision fp32" "bf16:--precision bf16")
if "$BIN" --steps 1 --warmup 0 --depth 1 --vocab 256 --seq-len 16 --batch 1 --bf16-kernel bf16_amx >/dev/null 2>&1; then
  JARIP_ROWS+=("bf16_amx:--bf16-kernel bf16_amx")
fi

for rep in $(seq 1 "$REPEATS"); do
  echo "repeat $rep/$REPEATS: PyTorch fp32..." >&2
  python3 bench/train/train_ref.py "${ARGS[@]}" > "$OUT/torch.$rep.json"
  if [[ "${BENCH_TORCH_BF16:-1}" == 1 ]]; then
    echo "repeat $rep/$REPEATS: PyTorch bf16 autocast..." >&2
    python3 bench/train/train_ref.py "${ARGS[@]}" --bf16 > "$OUT/torch_bf16.$rep.json"
  fi
  for row in "${JARIP_ROWS[@]}"; do
    name=${row%%:*}
    read -r -a flags <<< "${row#*:}"
    echo "repeat $rep/$REPEATS: jarip $name..." >&2
    "$BIN" "${ARGS[@]}" --kernels fused "${flags[@]}" > "$OUT/jarip_$name.$rep.json"
  done
  if [[ "${BENCH_COMPOSED:-0}" == 1 ]]; then
    echo "repeat $rep/$REPEATS: jarip composed..." >&2
    "$BIN" "${ARGS[@]}" --kernels composed > "$OUT/composed.$rep.json"
  fi
done

python3 - "$OUT" <<'PY'
import glob, json, os, statistics, subprocess, sys
out = sys.argv[1]
order = ("torch", "torch_bf16", "jarip_fp32", "jarip_bf16", "jarip_bf16_amx", "composed")
rows = {}
for name in order:
    runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, f"{name}.*.json")))]
    if runs:
        rows[name] = runs
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
j0 = rows["jarip_fp32"][0]
peak = j0.get("peak_gflops")
print(f"CPU: {cpu}; {len(next(iter(rows.values())))} alternating repeats per row")
print(f"MFU against this machine's measured fp32 peak: {peak:.1f} GFLOP/s" if peak else "MFU: see each row")
# One row per implementation (label, ms/step, tokens/s, MFU, peak RSS), medians over the repeats;
# the spread of tokens/s follows the table.
print(f"{'implementation':58} {'ms/step':>9} {'tokens/s':>9} {'MFU':>6} {'peak RSS':>9}")
summary, spread = {}, []
for name, runs in rows.items():
    ms = statistics.median(r["ms_per_step"] for r in runs)
    tps = [r["tokens_per_s"] for r in runs]
    rss = max(r["peak_rss_mb"] for r in runs)
    mfu = runs[0]["gflops_per_step"] / (ms / 1e3) / peak if peak else runs[0]["mfu"]
    summary[name] = (statistics.median(tps), rss)
    label = runs[0]["impl"]
    print(f"{label:58} {ms:9.0f} {statistics.median(tps):9.0f} {100*mfu:5.1f}% {rss:7.0f} MB")
    spread.append(f"{label.split(' (')[0]} {min(tps):.0f}–{max(tps):.0f}")
print("tokens/s range over the repeats: " + "; ".join(spread))
print(f"params {j0['params']:,} (torch {rows['torch'][0]['params']:,}); {j0['gflops_per_step']:.1f} GFLOP/step")
for j in ("jarip_fp32", "jarip_bf16", "jarip_bf16_amx"):
    for t in ("torch", "torch_bf16"):
        if j in summary and t in summary:
            (a, ra), (b, rb) = summary[j], summary[t]
            print(f"{rows[j][0]['impl'].split(' (')[0]} / {rows[t][0]['impl'].split(' (')[0]}: tokens/s {a / b:.2f}x, peak RSS {ra / rb:.2f}x")
PY
