#!/usr/bin/env python3
"""Serving benchmark: streaming clients against `jarip serve` on loopback.

For each concurrency level C, C client threads each send R streamed chat requests back to back
(`ignore_eos`, so every request generates exactly --max-tokens tokens) and measure, per
request, the time to the first content chunk (TTFT) and the gaps between content chunks
(inter-token latency, ITL). Printed per level: requests/s, aggregate completion tokens/s,
p50/p99 TTFT and ITL; then the ratio of aggregate tokens/s at 8 clients to 1.

Standard library only (http.client, threads), so it runs anywhere Python does. Clients share
the machine with the server: on a 2-core machine their parsing takes CPU the server would use.
"""

import argparse
import http.client
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(host, port, body):
    """One streamed request; returns (ttft_s, [itl_s...], completion_tokens, e2e_s)."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    ttft, last, itls, tokens = None, None, [], 0
    while True:
        line = resp.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        # Only the usage chunk is parsed: the clients share the CPU with the server, so a
        # content chunk is recognised by its bytes (the server writes compact JSON).
        if b'"usage":{' in data:
            tokens = json.loads(data)["usage"]["completion_tokens"]
        elif b'"error":{' in data:
            raise RuntimeError(data.decode(errors="replace"))
        if b'"content":"' in data and b'"content":""' not in data:
            now = time.perf_counter()
            if ttft is None:
                ttft = now - t0
            else:
                itls.append(now - last)
            last = now
    conn.close()
    return ttft, itls, tokens, time.perf_counter() - t0


def run_level(url, model, clients, per_client, max_tokens, prompt):
    u = urlparse(url)
    results, errors = [], []
    lock = threading.Lock()

    def client(i):
        for j in range(per_client):
            body = json.dumps({
                "model": model, "messages": [{"role": "user", "content": f"{prompt} ({i}-{j})"}],
                "max_tokens": max_tokens, "temperature": 0.8, "seed": 1000 * i + j, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": True,
            })
            try:
                r = one_request(u.hostname, u.port, body)
                with lock:
                    results.append(r)
            except Exception as e:  # reported, and the level is marked failed
                with lock:
                    errors.append(str(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    ttfts = [r[0] for r in results if r[0] is not None]
    itls = [x for r in results for x in r[1]]
    tokens = sum(r[2] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(1000 * percentile(ttfts, 50), 1),
        "ttft_p99_ms": round(1000 * percentile(ttfts, 99), 1),
        "itl_p50_ms": round(1000 * percentile(itls, 50), 2),
        "itl_p99_ms": round(1000 * percentile(itls, 99), 2),
        "e2e_mean_s": round(statistics.mean(r[3] for r in results), 2) if results else None,
        "first_error": errors[0] if errors else None,
    }


def start_server(binary, model, max_batch, extra=()):
    proc = subprocess.Popen(
        [binary, "serve", "--model", model, "--port", "0", "--max-batch", str(max_batch), *extra],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"http://[^\s/]+", line)
    if not m:
        proc.kill()
        sys.exit(f"jarip serve did not start: {line!r}")
    name = re.search(r"model '([^']+)'", line).group(1)
    return proc, m.group(0), name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/speedrun", help="model directory to serve (default runs/speedrun)")
    ap.add_argument("--bin", default="target/release/jarip")
    ap.add_argument("--url", help="benchmark a server already running here instead of starting one")
    ap.add_argument("--served-model", help="model id of --url's server (default: asked from /v1/models)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--min-requests", type=int, default=8,
                    help="at least this many requests per level (few clients then send more each)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--prompt", default="대한민국의 주권은 누구에게 있나요? Tell me a story.")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()

    proc = None
    if a.url:
        url = a.url.rstrip("/")
        name = a.served_model
        if not name:
            u = urlparse(url)
            c = http.client.HTTPConnection(u.hostname, u.port)
            c.request("GET", "/v1/models")
            name = json.loads(c.getresponse().read())["data"][0]["id"]
    else:
        proc, url, name = start_server(a.bin, a.model, a.max_batch)
    try:
        # Warm-up: first-touch page faults and allocator growth stay out of the figures.
        run_level(url, name, 1, 1, 8, a.prompt)
        levels = []
        for c in map(int, a.concurrency.split(",")):
            per_client = max(a.requests_per_client, -(-a.min_requests // c))
            levels.append(run_level(url, name, c, per_client, a.max_tokens, a.prompt))
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)

    cols = ["clients", "requests", "errors", "requests_per_s", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms",
            "itl_p50_ms", "itl_p99_ms"]
    print(f"model {name}, {a.max_tokens} tokens per request")
    print(" | ".join(cols))
    for lv in levels:
        print(" | ".join(str(lv[c]) for c in cols))
    by = {lv["clients"]: lv for lv in levels}
    out = {"model": name, "max_tokens": a.max_tokens, "levels": levels}
    if 1 in by and 8 in by:
        ratio = by[8]["tokens_per_s"] / by[1]["tokens_per_s"]
        out["tokens_per_s_8_over_1"] = round(ratio, 2)
        print(f"aggregate tokens/s at 8 clients / at 1: {ratio:.2f}x (target ≥ 4x)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    if any(lv["errors"] for lv in levels):
        sys.exit(f"errors: {[lv['first_error'] for lv in levels if lv['errors']]}")


if __name__ == "__main__":
    main()
