"""Decode tokens/s of llama.cpp (through llama-cpp-python) on a GGUF file, batch 1, the way
bench/decode measures jarip: a prompt of CONTEXT tokens is evaluated first (not timed), then
STEPS single-token steps are timed (the best of REPEATS runs). With --prefill N, also the
prompt-processing rate: one N-token prompt evaluated from an empty cache (best of REPEATS).

    python bench/decode/llamacpp_decode.py FILE.gguf [--context 16] [--steps 64] [--threads 2] [--prefill 512]
"""

import argparse
import time

from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--context", type=int, default=16)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jarip", type=float, help="jarip's tokens/s on the same file, to print the ratio")
    ap.add_argument("--prefill", type=int, default=0, help="also time one prompt of this many tokens")
    ap.add_argument("--jarip-prefill", type=float, help="jarip's prefill tokens/s, to print the ratio")
    a = ap.parse_args()
    n_ctx = max(a.context + a.steps + 8, a.prefill + 8)
    llm = Llama(model_path=a.gguf, n_ctx=n_ctx, n_threads=a.threads, n_batch=max(256, a.prefill), verbose=False)
    prompt = [(j * 7) % 200 + 1 for j in range(a.context)]
    best = 0.0
    for _ in range(a.repeats):
        llm.reset()
        llm.eval(prompt)
        t = time.perf_counter()
        tok = 5
        for i in range(a.steps):
            llm.eval([tok])
            tok = (tok * 31 + i) % 200 + 1
        best = max(best, a.steps / (time.perf_counter() - t))
    print(f"llama.cpp {a.gguf}: context {a.context}, batch 1: {best:.1f} tok/s (best of {a.repeats})")
    if a.jarip:
        print(f"jarip / llama.cpp = {a.jarip / best:.2f}x")
    if a.prefill:
        prompt = [(j * 7) % 200 + 1 for j in range(a.prefill)]
        best = 0.0
        for _ in range(a.repeats):
            llm.reset()
            t = time.perf_counter()
            llm.eval(prompt)
            best = max(best, a.prefill / (time.perf_counter() - t))
        print(f"llama.cpp {a.gguf}: prefill {a.prefill}: {best:.1f} tok/s (best of {a.repeats})")
        if a.jarip_prefill:
            print(f"jarip / llama.cpp prefill = {a.jarip_prefill / best:.2f}x")


if __name__ == "__main__":
    main()
