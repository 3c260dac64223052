#!/usr/bin/env bash
# Data-parallel training-step benchmark: jarip over MPI vs PyTorch DistributedDataParallel (gloo),
# both with N ranks of one thread each, beside each one's single process using N threads, on the
# same model and global batch (--accum micro-batches per step, split among the ranks).
#
#   bench/train/dist.sh [--ranks 2] [--accum 2] [--steps 6 --warmup 2 --depth 6 --batch 8 ...]
#
# Needs: python3 with torch (bench/train/requirements.txt), Open MPI (mpirun) and libclang to
# build jarip's mpi feature.
set -euo pipefail
cd "$(dirname "$0")/../.."
RANKS=2
ACCUM=2
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ranks) RANKS="$2"; shift 2 ;;
    --accum) ACCUM="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
ARGS+=(--accum "$ACCUM")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

echo "building jarip bench_train with MPI (release)..." >&2
cargo build --release -q -p jarip-train --features mpi --example bench_train
BIN=target/release/examples/bench_train

echo "PyTorch, 1 process × $RANKS threads..." >&2
OMP_NUM_THREADS=$RANKS python3 bench/train/train_ref.py "${ARGS[@]}" > "$OUT/1-torch.json"
echo "PyTorch DDP, $RANKS ranks × 1 thread..." >&2
OMP_NUM_THREADS=1 python3 -m torch.distributed.run --nproc-per-node "$RANKS" --master-port 29533 \
  bench/train/train_ref.py "${ARGS[@]}" 2>/dev/null | grep '^{' > "$OUT/2-torch-ddp.json"
echo "jarip, 1 process × $RANKS threads..." >&2
RAYON_NUM_THREADS=$RANKS "$BIN" "${ARGS[@]}" 2>/dev/null > "$OUT/3-jarip.json"
echo "jarip MPI, $RANKS ranks × 1 thread..." >&2
RAYON_NUM_THREADS=1 mpirun -n "$RANKS" "$BIN" --dist mpi "${ARGS[@]}" 2>/dev/null \
  | grep '^{' > "$OUT/4-jarip-mpi.json"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = {f: json.load(open(os.path.join(out, f))) for f in sorted(os.listdir(out))}
print(f"{'implementation':58} {'ms/step':>9} {'tokens/s':>9} {'exchange':>9} {'peak RSS':>9}")
for r in rows.values():
    ex = f"{r['exchange_ms']:7.0f}ms" if "exchange_ms" in r else "        -"
    print(f"{r['impl']:58} {r['ms_per_step']:9.0f} {r['tokens_per_s']:9.0f} {ex} {r['peak_rss_mb']:7.0f} MB")
t1, t2, j1, j2 = (rows[k]["tokens_per_s"] for k in ("1-torch.json", "2-torch-ddp.json", "3-jarip.json", "4-jarip-mpi.json"))
print(f"data-parallel jarip / PyTorch DDP: {j2 / t2:.2f}x tokens/s")
print(f"ranks vs threads: jarip {j2 / j1:.2f}x, PyTorch {t2 / t1:.2f}x")
PY
