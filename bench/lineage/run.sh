#!/usr/bin/env bash
# Lineage benchmark: `jarip lineage` on two 7B-shaped bf16 HF-layout models (sharded safetensors
# with an index) and on A against a derivative of A, with seconds, peak RSS, GB of weights read and
# GB/s, p-values and verdicts; then, at a size it can handle, the decision of earlier versions
# (every tensor as f32 in memory plus references) next to the test on the same pair.
#
#   bench/lineage/run.sh [--spec 7b|small] [--scratch DIR] [--keep] [--old-spec small]
#
# Scratch space: 4 models of the spec (7b: ~13.5 GB each, ~54 GB) plus 3 of the old spec. They are
# deleted afterwards unless --keep. The derivative B is A with Gaussian noise of 3x each weight's
# spread (a stand-in for long continued pretraining), MLP units, attention heads and residual
# channels permuted; D is the same disguise with noise of 30x (matched weights correlate with A's
# at rho = 0.033, near the test's rho_min); C is an independent seed. Prints the CPU model with the
# figures. Page caches are dropped before each run where the kernel allows it (root), so the
# weights are read from disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
SPEC=7b OLD_SPEC=small SCRATCH= KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --spec) SPEC=$2; shift 2 ;;
    --old-spec) OLD_SPEC=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
W=${SCRATCH:-$(mktemp -d "${TMPDIR:-/tmp}/jarip-bench-lineage.XXXXXX")}
mkdir -p "$W"
[[ $KEEP == 1 ]] || trap 'rm -rf "$W"' EXIT

echo "building (release)..." >&2
cargo build --release -q -p jarip -p jarip-provenance --example synth_model --example old_lineage
J=$PWD/target/release/jarip
S=$PWD/target/release/examples/synth_model
OLD=$PWD/target/release/examples/old_lineage
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
echo "CPU: $CPU; $(nproc) cores; $(free -g | awk '/Mem:/ {print $2}') GB memory" >&2

gen() { # spec dir seed [derive flags...]
  local spec=$1 dir=$2 seed=$3; shift 3
  [[ -f $dir/model.safetensors.index.json ]] || "$S" "$dir" --spec "$spec" --seed "$seed" "$@" >&2
}
DERIVE=(--noise 3 --permute-units --permute-heads --permute-channels --derive-seed 7)
gen "$SPEC" "$W/$SPEC-a" 1
gen "$SPEC" "$W/$SPEC-c" 2
gen "$SPEC" "$W/$SPEC-b" 1 "${DERIVE[@]}"
gen "$SPEC" "$W/$SPEC-d" 1 --noise 30 --permute-units --permute-heads --permute-channels --derive-seed 9

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

# run NAME CMD...: peak RSS and wall seconds from /usr/bin/time, the JSON on stdout.
run() {
  local name=$1; shift
  drop_caches
  /usr/bin/time -f '%M %e' -o "$W/$name.time" "$@" > "$W/$name.json"
  read -r KB SECS < "$W/$name.time"
}

printf '\n%-34s %8s %10s %9s %7s %11s %14s %s\n' pair seconds "peak RSS" "GB read" "GB/s" "log10 p" "rho_min" verdict
for pair in "$SPEC-a $SPEC-b derivative" "$SPEC-a $SPEC-d derivative,noise-30x" "$SPEC-a $SPEC-c independent"; do
  set -- $pair
  run "$1-$2" "$J" lineage "$W/$1" "$W/$2" --json
  python3 - "$W/$1-$2.json" "$KB" "$SECS" "$3 ($SPEC)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); kb = int(sys.argv[2]); s = float(sys.argv[3])
gb = r["bytes_read"] / 1e9
rho = r["rho_min"]
print(f'{sys.argv[4]:<34} {s:8.1f} {kb/1024:8.0f} MB {gb:9.2f} {gb/s:7.2f} {r["log10_p"]:11.1f} {("%.4f" % rho) if rho is not None else "-":>14} {r["verdict"]}')
PY
done

echo >&2
echo "previous implementation (all tensors as f32 + references) at --old-spec $OLD_SPEC, next to the test:" >&2
gen "$OLD_SPEC" "$W/$OLD_SPEC-a" 1
gen "$OLD_SPEC" "$W/$OLD_SPEC-b" 1 "${DERIVE[@]}"
gen "$OLD_SPEC" "$W/$OLD_SPEC-c" 2
printf '\n%-34s %8s %10s %s\n' "pair ($OLD_SPEC)" seconds "peak RSS" result
for pair in "b derivative" "c independent"; do
  set -- $pair
  run "old-$1" "$OLD" "$W/$OLD_SPEC-a" "$W/$OLD_SPEC-$1"
  printf '%-34s %8.1f %7.0f MB %s\n' "previous: $2" "$SECS" "$((KB / 1024))" "$(cat "$W/old-$1.json")"
  run "new-$1" "$J" lineage "$W/$OLD_SPEC-a" "$W/$OLD_SPEC-$1" --json
  printf '%-34s %8.1f %7.0f MB %s\n' "test: $2" "$SECS" "$((KB / 1024))" \
    "$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["verdict"], "log10 p", round(r["log10_p"],1))' "$W/new-$1.json")"
done
