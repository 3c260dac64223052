#!/usr/bin/env python3
"""Reference for `jarip data contamination`: GPT-3's 13-gram check written plainly in Python
with Hugging Face `tokenizers` reading the same tokenizer.json.

Items are rendered as jarip renders them (MMLU's original CSV: `question\\nA. …\\nB. …\\nC. …\\nD. …
\\nAnswer:` then a space and the answer letter; jarip's JSONL multiple choice: the context, its
delimiter, the gold choice), NFC-normalised and encoded without special tokens. Every 13-gram of
every item (an item shorter than 13 tokens: the whole item) goes into a set of byte strings; the
corpus documents are encoded in batches (`encode_batch`, Rust threads) and every window of every
document is looked up. Prints the items flagged per task, the corpus MB/s, and with `--compare
REPORT.json` how many items' `ngram13` flags differ from jarip's report on the same corpus.

    python3 contamination_ref.py --tokenizer TOK/tokenizer.json --corpus DIR_OR_JSONL \\
        --mmlu bench_test.csv --ours bench_ours.jsonl [--compare report.json]
"""

import argparse
import csv
import json
import sys
import time
import unicodedata
from array import array
from pathlib import Path

try:
    from tokenizers import Tokenizer
except ImportError:  # the benchmark treats the reference as optional
    print("tokenizers is not installed (pip install tokenizers): reference skipped", file=sys.stderr)
    sys.exit(3)

N = 13


def mmlu_items(path):
    items = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            q, a, b, c, d, letter = row
            letter = letter.strip().strip("()").strip().upper()
            items.append(f"{q.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {letter}")
    return items


def ours_items(path):
    items = []
    for line in open(path, encoding="utf-8"):
        if line.strip():
            r = json.loads(line)
            items.append(r["context"] + r.get("delimiter", " ") + r["choices"][r["gold"]])
    return items


def corpus_files(p: Path):
    if p.is_dir():
        files = sorted(p.glob("documents*.jsonl"), key=lambda x: (x.name != "documents.jsonl", x.name))
        return files
    return [p]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--mmlu")
    ap.add_argument("--ours")
    ap.add_argument("--compare")
    ap.add_argument("--batch-mb", type=float, default=8)
    a = ap.parse_args()
    tok = Tokenizer.from_file(a.tokenizer)

    tasks = []
    if a.mmlu:
        tasks.append((Path(a.mmlu).stem, mmlu_items(a.mmlu)))
    if a.ours:
        tasks.append((Path(a.ours).stem, ours_items(a.ours)))
    # 13-gram (as bytes of u32 ids) -> nothing; a set per length for the short items.
    grams = {}
    encoded = []
    for name, items in tasks:
        enc = tok.encode_batch([unicodedata.normalize("NFC", t) for t in items], add_special_tokens=False)
        ids = [array("I", e.ids) for e in enc]
        encoded.append(ids)
        for it in ids:
            if len(it) == 0:
                continue
            n = min(N, len(it))
            s = grams.setdefault(n, set())
            for i in range(len(it) - n + 1):
                s.add(it[i : i + n].tobytes())
    found = {n: set() for n in grams}

    t0 = time.perf_counter()
    docs = nbytes = ntok = 0
    batch, batch_bytes = [], 0

    def flush():
        nonlocal ntok
        for e in tok.encode_batch(batch, add_special_tokens=False):
            b = array("I", e.ids).tobytes()
            ntok += len(e.ids)
            for n, s in grams.items():
                w = 4 * n
                f = found[n]
                for i in range(0, len(b) - w + 1, 4):
                    g = b[i : i + w]
                    if g in s:
                        f.add(g)
        batch.clear()

    for path in corpus_files(Path(a.corpus)):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                text = json.loads(line)["text"]
                docs += 1
                nb = len(text.encode())
                nbytes += nb
                batch.append(text)
                batch_bytes += nb
                if batch_bytes >= a.batch_mb * 1e6:
                    flush()
                    batch_bytes = 0
    flush()
    secs = time.perf_counter() - t0

    flags = {}
    for (name, items), ids in zip(tasks, encoded):
        fl = []
        for it in ids:
            if len(it) == 0:
                fl.append(False)
                continue
            n = min(N, len(it))
            fl.append(any(it[i : i + n].tobytes() in found[n] for i in range(len(it) - n + 1)))
        flags[name] = fl
    out = {
        "documents": docs,
        "bytes": nbytes,
        "tokens": ntok,
        "seconds": secs,
        "mb_per_s": nbytes / 1e6 / secs,
        "ngram13": {k: sum(v) for k, v in flags.items()},
    }
    if a.compare:
        report = json.load(open(a.compare, encoding="utf-8"))
        diff = 0
        for t in report["tasks"]:
            mine = flags.get(t["name"])
            if mine is None:
                continue
            for it in t["items"]:
                diff += int(mine[it["index"]] != it["ngram13"])
        out["disagreements"] = diff
    print(json.dumps(out))


if __name__ == "__main__":
    main()
