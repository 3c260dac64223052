#!/usr/bin/env bash
# jarip next to llama.cpp on the same weights: a ~100M SwiGLU model at random initialisation
# exported as GGUF of llama.cpp's qwen3 architecture (f32 and Q8_0), run by jarip (loading the
# GGUF) and by llama.cpp (llama-cpp-python, built for this CPU) in one run: batch-1 decode after
# a 16-token prompt, and prompt processing (prefill) of a 512-token prompt; ratios printed.
#   bench/decode/vs_llamacpp.sh TOKENIZER_DIR     e.g. runs/speedrun/tokenizer
# STEPS (decode steps, default 64), PREFILL (prompt tokens, default 512), REPEATS (default 1).
# Needs: pip install -r bench/requirements-llamacpp.txt (builds llama.cpp; several minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
tok="${1:?usage: bench/decode/vs_llamacpp.sh TOKENIZER_DIR}"
out="${OUT:-target/bench-llamacpp}"
# shellcheck source=bench/decode/compare.sh
source bench/decode/compare.sh
"$bin" --write-qwen3 "$out" --tokenizer "$tok"
for rep in $(seq 1 "${REPEATS:-1}"); do
  for t in f32 bf16 q8_0; do
    f="$out/jarip-qwen3-$t.gguf"
    compare "$f"
  done
done
