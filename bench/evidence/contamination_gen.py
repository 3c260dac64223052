#!/usr/bin/env python3
"""Deterministic inputs for the contamination benchmark (bench/evidence/contamination.sh).

From the demo corpus's text lines (Korean law and bills, Shakespeare, Milton):

- the lines are split by a hash into corpus lines (90 %) and held-out lines (10 %, at least 40
  characters, none of which is also a corpus line);
- two evaluation task files are built from held-out lines only: `tasks/bench_test.csv` (MMLU's
  original CSV layout: question, A-D, answer letter; 3000 items) and `tasks/bench_ours.jsonl`
  (jarip's own JSONL multiple-choice layout; 2000 items);
- a corpus of about `--gb` GB is written in the prepared-corpus layout (`corpus/documents-NNNNN.jsonl`,
  one `{"text": ...}` per line, files closed past 1 GiB as `jarip data prepare` does): each
  document is a run of 20-120 consecutive corpus lines under a numbered header;
- some items are planted into documents spread evenly over the corpus, as a web page quoting a
  benchmark would hold them: 100 MMLU items rendered in full (question, options, `Answer: X`, as
  jarip and lm-evaluation-harness render them), 100 MMLU questions alone, and 100 of our items
  (context, a space, the gold answer). `planted.json` lists them;
- `subset/documents.jsonl` holds the corpus's first `--subset-mb` MB, for the side-by-side run of
  the Python reference.

Everything is a function of `--seed`; nothing is downloaded.
"""

import argparse
import csv
import hashlib
import json
import os
import random
from pathlib import Path

MAX_FILE = 1 << 30


def demo_lines(demo: Path):
    lines = []
    for p in sorted(demo.rglob("*.txt")):
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            line = " ".join(line.split())
            if line:
                lines.append(line)
    return lines


def held_out(line: str) -> bool:
    return hashlib.sha256(line.encode()).digest()[0] < 26  # about 10 %


def render_mmlu(q, opts, letter):
    return f"{q.strip()}\nA. {opts[0]}\nB. {opts[1]}\nC. {opts[2]}\nD. {opts[3]}\nAnswer: {letter}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", default="data/demo")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--subset-mb", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    out = Path(a.out)
    rng = random.Random(a.seed)

    lines = demo_lines(Path(a.demo))
    corpus_lines = [l for l in lines if not held_out(l)]
    in_corpus = set(corpus_lines)
    held = [l for l in lines if held_out(l) and len(l) >= 40 and l not in in_corpus]
    phrases = [" ".join(l.split()[:6]) for l in held]

    # Tasks: held-out text only.
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    mmlu = []
    for i in range(3000):
        q = held[rng.randrange(len(held))] + " " + held[rng.randrange(len(held))]
        opts = [phrases[rng.randrange(len(phrases))] for _ in range(4)]
        letter = "ABCD"[rng.randrange(4)]
        mmlu.append((q, opts, letter))
    with open(out / "tasks" / "bench_test.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for q, opts, letter in mmlu:
            w.writerow([q, *opts, letter])
    ours = []
    for i in range(2000):
        ctx = held[rng.randrange(len(held))] + " " + held[rng.randrange(len(held))]
        choices = [phrases[rng.randrange(len(phrases))] for _ in range(3)]
        gold = rng.randrange(3)
        ours.append({"context": ctx, "choices": choices, "gold": gold})
    with open(out / "tasks" / "bench_ours.jsonl", "w", encoding="utf-8") as f:
        for r in ours:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    plants = []  # (text, kind, index)
    for i in range(0, 3000, 30):
        q, opts, letter = mmlu[i]
        plants.append((render_mmlu(q, opts, letter), "mmlu_full", i))
    for i in range(15, 3000, 30):
        plants.append((mmlu[i][0].strip(), "mmlu_question", i))
    for i in range(0, 2000, 20):
        r = ours[i]
        plants.append((r["context"] + " " + r["choices"][r["gold"]], "ours", i))
    rng.shuffle(plants)

    def make_doc(r: random.Random, n: int) -> str:
        k = r.randint(20, 120)
        s = r.randrange(len(corpus_lines) - k)
        head = f"문서 {n}" if r.random() < 0.2 else f"Document {n}"
        return head + "\n" + "\n".join(corpus_lines[s : s + k])

    # Documents expected, from a sample of the same generator, to spread the plants evenly.
    sample = random.Random(a.seed + 1)
    avg = sum(len(make_doc(sample, 0).encode()) + 12 for _ in range(2000)) / 2000
    target = int(a.gb * 1e9)
    expected_docs = int(0.95 * target / avg)  # a margin, so every plant lands before the end
    at = {int((j + 0.5) * expected_docs / len(plants)): p for j, p in enumerate(plants)}

    corpus_dir = out / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for old in corpus_dir.glob("documents*.jsonl"):
        old.unlink()
    (out / "subset").mkdir(parents=True, exist_ok=True)
    subset = open(out / "subset" / "documents.jsonl", "w", encoding="utf-8")
    subset_left = int(a.subset_mb * 1e6)
    planted = {"mmlu_full": [], "mmlu_question": [], "ours": []}
    planted_in_subset = {"mmlu_full": [], "mmlu_question": [], "ours": []}
    part, f, in_file, written, n = 0, None, 0, 0, 0
    while written < target:
        if f is None or in_file >= MAX_FILE:
            if f:
                f.close()
            f = open(corpus_dir / f"documents-{part:05d}.jsonl", "w", encoding="utf-8")
            part, in_file = part + 1, 0
        doc = make_doc(rng, n)
        if n in at:
            text, kind, idx = at[n]
            ls = doc.split("\n")
            cut = rng.randint(1, len(ls))
            doc = "\n".join(ls[:cut] + [text] + ls[cut:])
            planted[kind].append(idx)
            if subset_left > 0:
                planted_in_subset[kind].append(idx)
        line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
        b = len(line.encode())
        f.write(line)
        if subset_left > 0:
            subset.write(line)
            subset_left -= b
        in_file += b
        written += b
        n += 1
    f.close()
    subset.close()
    for kind in planted:
        planted[kind].sort()
        planted_in_subset[kind].sort()
    meta = {
        "documents": n,
        "bytes": written,
        "files": part,
        "items": {"bench_test": len(mmlu), "bench_ours": len(ours)},
        "planted": planted,
        "planted_in_subset": planted_in_subset,
        "seed": a.seed,
    }
    (out / "planted.json").write_text(json.dumps(meta, indent=1))
    print(
        f"corpus: {n} documents, {written / 1e9:.2f} GB in {part} file(s); tasks: {len(mmlu)} + {len(ours)} items; "
        f"planted {sum(len(v) for v in planted.values())} ({sum(len(v) for v in planted_in_subset.values())} in the subset)"
    )


if __name__ == "__main__":
    main()
