#!/usr/bin/env python3
"""Speedrun size sweep: short proxy pretraining runs at equal wall-clock, nanochat-style.

Each configuration (depth, width, batch, learning rate) is first timed on an idle machine
(`--time-steps` steps; the median step time after the first two), then trained for as many
steps as fit in `--minutes` at that speed (a fixed step count, so a busy machine does not
change the result), and scored on the whole validation split. Prints a Markdown table with
the CPU model.

    python3 bench/speedrun/sweep.py --jarip target/release/jarip --shards RUN/shards \
        --minutes 3 --out /tmp/sweep [--only NAME ...] [--time-only]
"""
import argparse, json, os, statistics, subprocess, sys

CONFIGS = [
    # name, n_layer, n_embd, batch, lr
    ("d4-w256-b8-lr3e-3", 4, 256, 8, 3e-3),
    ("d3-w192-b8-lr3e-3", 3, 192, 8, 3e-3),
    ("d6-w384-b8-lr3e-3", 6, 384, 8, 3e-3),
    ("d4-w384-b8-lr3e-3", 4, 384, 8, 3e-3),
    ("d6-w256-b8-lr3e-3", 6, 256, 8, 3e-3),
    ("d4-w256-b8-lr1.5e-3", 4, 256, 8, 1.5e-3),
    ("d4-w256-b8-lr6e-3", 4, 256, 8, 6e-3),
    ("d4-w256-b16-lr3e-3", 4, 256, 16, 3e-3),
    ("d4-w256-b4-lr3e-3", 4, 256, 4, 3e-3),
    # Second round, around the first round's best (the smallest model, the highest rate).
    ("d3-w192-b8-lr6e-3", 3, 192, 8, 6e-3),
    ("d3-w192-b8-lr1e-2", 3, 192, 8, 1e-2),
    ("d2-w128-b8-lr6e-3", 2, 128, 8, 6e-3),
    ("d3-w192-b4-lr6e-3", 3, 192, 4, 6e-3),
]


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def model_config(n_layer, n_embd, vocab):
    return {
        "vocab_size": vocab, "n_layer": n_layer, "n_embd": n_embd, "n_head": n_embd // 64,
        "n_kv_head": n_embd // 64, "mlp_hidden": 4 * n_embd, "mlp": "relu2", "max_seq_len": 1024,
        "rope_base": 10000.0, "logit_softcap": 15.0, "norm_eps": 1e-5,
    }


def params(n_layer, n_embd, vocab):
    return 2 * vocab * n_embd + n_layer * (4 * n_embd * n_embd + 8 * n_embd * n_embd)


def pretrain(a, cfg_path, out, batch, lr, steps, eval_every):
    cmd = [a.jarip, "pretrain", "--data", a.shards, "--out", out, "--config", cfg_path,
           "--max-steps", str(steps), "--seed", str(a.seed), "--seq-len", "256",
           "--batch-size", str(batch), "--lr", str(lr), "--warmup-steps", str(min(50, max(1, steps // 10))),
           "--checkpoint-every", "1000000", "--keep-checkpoints", "1", "--eval-every", str(eval_every),
           "--eval-tokens", "0", "--sample-every", "0", "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jarip", default="target/release/jarip")
    p.add_argument("--shards", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--time-steps", type=int, default=8)
    p.add_argument("--only", nargs="*")
    p.add_argument("--time-only", action="store_true")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    timings_path = os.path.join(a.out, "timings.json")
    timings = json.load(open(timings_path)) if os.path.exists(timings_path) else {}
    results_path = os.path.join(a.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    configs = [c for c in CONFIGS if not a.only or c[0] in a.only]
    for name, L, C, B, lr in configs:
        cfg_path = os.path.join(a.out, f"{name}.json")
        json.dump(model_config(L, C, a.vocab), open(cfg_path, "w"))
        if name not in timings:
            out = os.path.join(a.out, "time-" + name)
            subprocess.run(["rm", "-rf", out])
            m = pretrain(a, cfg_path, out, B, lr, a.time_steps, 1000000)
            ms = [x["step_ms"] for x in m if x.get("step_ms")][2:]
            timings[name] = statistics.median(ms)
            json.dump(timings, open(timings_path, "w"), indent=1)
            print(f"{name}: {timings[name]:.0f} ms/step", flush=True)
    if a.time_only:
        return
    for name, L, C, B, lr in configs:
        if name in results:
            continue
        steps = int(a.minutes * 60e3 / timings[name])
        out = os.path.join(a.out, "run-" + name)
        subprocess.run(["rm", "-rf", out])
        m = pretrain(a, os.path.join(a.out, f"{name}.json"), out, B, lr, steps, max(1, steps // 4))
        evals = [(x["step"], x["val_bpb"]) for x in m if x.get("val_bpb") is not None]
        results[name] = {"steps": steps, "tokens": steps * B * 256, "val_bpb": evals[-1][1], "curve": evals}
        json.dump(results, open(results_path, "w"), indent=1)
        print(f"{name}: {steps} steps → val bpb {evals[-1][1]:.4f}", flush=True)
    print(f"\nCPU: {cpu_model()}; {a.minutes:g} min per configuration at its measured idle step time\n")
    print("| configuration | params | ms/step | steps | tokens | val bpb |\n|---|---|---|---|---|---|")
    for name, L, C, B, lr in sorted(configs, key=lambda c: results.get(c[0], {}).get("val_bpb", 9)):
        r = results.get(name)
        if r:
            print(f"| {name} | {params(L, C, a.vocab)/1e6:.1f}M | {timings[name]:.0f} | {r['steps']} | "
                  f"{r['tokens']/1e6:.2f}M | {r['val_bpb']:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
