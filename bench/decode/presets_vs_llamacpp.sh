#!/usr/bin/env bash
# Each architecture preset's ~100M model (depth 12: 768 wide, 12 layers, SwiGLU 2048) at random
# initialisation, exported as GGUF of llama.cpp's own architecture (`llama`, `qwen3`) in f32 and
# Q8_0, decoded by jarip (loading the GGUF) and by llama.cpp (llama-cpp-python built for this CPU)
# in one run: batch-1 decode after a 16-token prompt, and prompt processing of 512 tokens.
#   bench/decode/presets_vs_llamacpp.sh TOKENIZER_DIR      e.g. runs/speedrun/tokenizer
# Needs: pip install -r bench/requirements-llamacpp.txt (builds llama.cpp; several minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
tok="${1:?usage: bench/decode/presets_vs_llamacpp.sh TOKENIZER_DIR}"
out="${OUT:-target/bench-presets}"
# shellcheck source=bench/decode/compare.sh
source bench/decode/compare.sh
for arch in llama qwen3; do
  "$bin" --write-preset "$arch" --out "$out" --tokenizer "$tok"
  for t in f32 q8_0; do
    f="$out/jarip-$arch-$t.gguf"
    compare "$f"
  done
done
