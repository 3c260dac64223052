# Sourced by the decode benchmarks (after `cd` to the repository root): sets `py` (PYTHON),
# `steps` (STEPS, default 64) and `prefill` (PREFILL, default 512), prints the CPU, builds
# decode_bench into `bin`; then `compare FILE.gguf` runs jarip's decode_bench ($bin) and
# llama.cpp ($py bench/decode/llamacpp_decode.py) on one GGUF file — batch-1 decode after a
# 16-token prompt ($steps steps) and the prefill of a $prefill-token prompt — and prints both with
# the ratios. A llama.cpp crash (its CPU build segfaulted on Q8_0 on the AMX Xeon this was written
# on) is reported and the run goes on.
py="${PYTHON:-python3}"
steps="${STEPS:-64}"
prefill="${PREFILL:-512}"
grep -m1 "model name" /proc/cpuinfo || true
cargo build --release -q -p jarip-infer --example decode_bench
bin=target/release/examples/decode_bench

compare() {
  local f="$1" report line pre ours ours_pre
  report="$("$bin" --model "$f" --contexts 16 --kv-cache f32 --steps "$steps" --prefill "$prefill" --skip-random)"
  grep "matrix kernel" <<<"$report" || true
  line="$(grep "batch 1" <<<"$report")"
  pre="$(grep "prefill" <<<"$report")"
  echo "jarip     $line"
  echo "jarip     $pre"
  ours="$(sed -E 's/.*batch 1 +([0-9.]+) tok\/s.*/\1/' <<<"$line")"
  ours_pre="$(sed -E 's/.*prefill [0-9]+ ([0-9.]+) tok\/s.*/\1/' <<<"$pre")"
  "$py" bench/decode/llamacpp_decode.py "$f" --context 16 --steps "$steps" --jarip "$ours" \
    --prefill "$prefill" --jarip-prefill "$ours_pre" || echo "llama.cpp $f: failed (exit $?)"
}
