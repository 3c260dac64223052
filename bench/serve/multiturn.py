#!/usr/bin/env python3
"""Multi-turn chat against `jarip serve`, with and without the prefix cache.

One client holds a conversation of --turns turns (each user message about --user-tokens tokens,
each answer --max-tokens tokens with ignore_eos); every turn resends the whole history, as chat
clients do. The server is started twice on the same model, with `--prefix-cache-mb 0` and with
the default cache, and the same conversation (same seeds) is replayed. Printed per turn: prompt
tokens, tokens served from the cache (`usage.prompt_tokens_details.cached_tokens`) and time to
first token; then the mean TTFT of the later turns for both servers and their ratio, and whether
both servers produced the same answers (they must: reuse changes no bit).

    python3 bench/serve/multiturn.py --model runs/speedrun/sft [--turns 6]
"""

import argparse
import http.client
import json
import signal
import statistics
import sys
import time
from urllib.parse import urlparse

sys.path.insert(0, __import__("os").path.dirname(__file__))
from bench import start_server  # noqa: E402

USER = ("대한민국 헌법 제1조는 대한민국은 민주공화국이며 모든 권력은 국민으로부터 나온다고 합니다. "
        "The constitution also guarantees the freedoms of speech and of the press. ")


def turn(url, model, messages, max_tokens, seed):
    """One streamed turn; returns (answer text, ttft_s, usage)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "seed": seed,
                       "temperature": 0.8, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    text, ttft, usage = [], None, None
    for line in resp:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices", []):
            piece = c.get("delta", {}).get("content")
            if piece:
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                text.append(piece)
    conn.close()
    return "".join(text), ttft, usage


def conversation(binary, model, cache_mb, args):
    proc, url, name = start_server(binary, model, 4, ["--prefix-cache-mb", str(cache_mb)])
    try:
        messages, rows = [], []
        for t in range(args.turns):
            messages.append({"role": "user", "content": f"({t + 1}) " + USER * args.user_repeat})
            answer, ttft, usage = turn(url, name, messages, args.max_tokens, seed=100 + t)
            messages.append({"role": "assistant", "content": answer})
            rows.append((usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], ttft, answer))
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/speedrun/sft")
    ap.add_argument("--bin", default="target/release/jarip")
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--user-repeat", type=int, default=1, help="copies of the user paragraph per turn")
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    off = conversation(args.bin, args.model, 0, args)
    on = conversation(args.bin, args.model, 512, args)
    print(f"{'turn':>4} {'prompt':>7} | {'no cache: cached':>16} {'TTFT ms':>8} | {'cache: cached':>13} {'TTFT ms':>8}")
    for i, (a, b) in enumerate(zip(off, on)):
        print(f"{i + 1:>4} {a[0]:>7} | {a[1]:>16} {1000 * a[2]:>8.1f} | {b[1]:>13} {1000 * b[2]:>8.1f}")
    later = slice(1, None)
    t_off = statistics.mean(r[2] for r in off[later])
    t_on = statistics.mean(r[2] for r in on[later])
    print(f"mean TTFT of turns 2-{args.turns}: {1000 * t_off:.1f} ms without, {1000 * t_on:.1f} ms with the "
          f"prefix cache ({t_off / t_on:.2f}x faster)")
    print("answers identical:", [r[3] for r in off] == [r[3] for r in on])


if __name__ == "__main__":
    main()
