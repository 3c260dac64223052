#!/usr/bin/env bash
# The data-order test on speedrun-sized models (depth 3, 256-token windows, 8 a step, the demo
# corpus), side by side:
#   own         pretrained STEPS steps with --seed 1337                 → should be trained-on-this-order
#   twin        same seed, config and data, --data-seed 7 (other order) → should be not-shown
#   independent --seed 2024 (other initialisation and order)           → should be not-shown
#   own + SFT   own fine-tuned on the demo conversations (other text), tested every 50 steps:
#               how long the trace survives.
# Prints seconds per test, ρ, log10 p and the verdict of each, with the CPU model.
#
#   bench/evidence/data_order.sh [STEPS] [SFT_STEPS]     (defaults 2840 and 400; WORK=dir)
#   OWN=runs/speedrun bench/evidence/data_order.sh       (test a finished speedrun: its shards,
#                                                          tokenizer and conversations are used)
# The speedrun itself runs about 2,840 steps (1.5 epochs of the demo corpus) with these settings.
# Fewer steps stay in the first epoch, where only recency leaves a trace.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-2840}
SFT_STEPS=${2:-400}
WORK=${WORK:-/tmp/jarip-bench-data-order}
J=target/release/jarip
cargo build --release -q -p jarip
mkdir -p "$WORK"
echo "CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p') ($(nproc) cores)"
if [ -n "${OWN:-}" ]; then
  BASE=$OWN
else
  BASE=$WORK/base
  [ -d "$BASE/shards" ] || $J speedrun --no-pretrain --out "$BASE" > "$WORK/base.log"
fi
OWN=${OWN:-$WORK/own}

pretrain() { # OUT SEED DATA_SEED
  [ -d "$1" ] && return 0
  $J pretrain --data "$BASE/shards" --tokenizer "$BASE/tokenizer" --out "$1" --depth 3 \
    --max-steps "$STEPS" --seq-len 256 --batch-size 8 --lr 0.003 --warmup-steps 50 --schedule cosine \
    --weight-decay 0.1 --grad-clip 1.0 --checkpoint-every 400 --eval-every 0 --sample-every 0 \
    --seed "$2" --data-seed "$3" --no-progress > "$1.log" 2>&1
  tail -1 "$1.log"
}
pretrain "$OWN" 1337 1337
pretrain "$WORK/twin" 1337 7
pretrain "$WORK/independent" 2024 2024

test_one() { # LABEL MODEL
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$($J provenance data-order "$OWN" --model "$2" --json --no-ledger 2>/dev/null)
  t1=$(date +%s.%N)
  python3 - "$1" "$(echo "$t1 - $t0" | bc)" "$out" <<'PY'
import json, sys
label, secs, r = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
print(f"{label:<22} {secs:6.1f} s  batches {r['batches']:5d}  rho {r['spearman']:+.4f}  "
      f"tau {r['kendall']:+.4f}  log10 p {r['log10_p']:8.2f}  {r['verdict']}")
PY
}
echo "data-order test of $OWN's recorded order (default --batches, 1 window each):"
test_one own "$OWN"
test_one "twin (other order)" "$WORK/twin"
test_one independent "$WORK/independent"

if [ ! -d "$WORK/sft" ]; then
  $J sft --base "$OWN" --data "$BASE/conversations.jsonl" --out "$WORK/sft" --max-steps "$SFT_STEPS" \
    --eval-every 50 --patience 1000 --seq-len 256 --batch-size 8 --no-progress > "$WORK/sft.log" 2>&1
fi
for c in "$WORK"/sft/ckpt-*; do
  test_one "own + SFT $(basename "$c" | sed 's/ckpt-0*//') steps" "$c"
done
