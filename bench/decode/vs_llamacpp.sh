#!/usr/bin/env bash
# Batch-1 decode, jarip next to llama.cpp on the same weights: a ~100M SwiGLU model at random
# initialisation exported as GGUF of llama.cpp's qwen3 architecture (f32 and Q8_0), decoded by
# jarip (loading the GGUF) and by llama.cpp (llama-cpp-python, built for this CPU).
#   bench/decode/vs_llamacpp.sh TOKENIZER_DIR     e.g. runs/speedrun/tokenizer
# Needs: pip install -r bench/requirements-llamacpp.txt (builds llama.cpp; several minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
tok="${1:?usage: bench/decode/vs_llamacpp.sh TOKENIZER_DIR}"
out="${OUT:-target/bench-llamacpp}"
py="${PYTHON:-python3}"
cargo build --release -q -p jarip-infer --example decode_bench
bin=target/release/examples/decode_bench
"$bin" --write-qwen3 "$out" --tokenizer "$tok"
for t in f32 q8_0; do
  f="$out/jarip-qwen3-$t.gguf"
  line="$("$bin" --model "$f" --contexts 16 --kv-cache f32 --steps "${STEPS:-64}" --skip-random | grep "batch 1")"
  echo "jarip     $line"
  ours="$(sed -E 's/.*batch 1 +([0-9.]+) tok\/s.*/\1/' <<<"$line")"
  "$py" bench/decode/llamacpp_decode.py "$f" --context 16 --steps "${STEPS:-64}" --jarip "$ours"
done
