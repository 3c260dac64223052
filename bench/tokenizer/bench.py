#!/usr/bin/env python3
"""Tokenizer benchmark: jarip vs HF `tokenizers` (BpeTrainer) vs tiktoken, on one corpus.

    python bench/tokenizer/bench.py CORPUS_DIR [--vocab-size 32768] [--threads 2]
                                    [--train-jsonl FILE] [--presets] [--out results.json]

CORPUS_DIR holds .txt files; files under a `ko/` or `en/` subdirectory count as Korean or English.
Each file is NFC-normalised and split by lines: the first 90 % is training text, the last 10 %
held-out text (per language). `--train-jsonl` trains on prepared docs (`{"text":...}` lines)
instead. Prints, side by side:
  1. training seconds and peak RSS of jarip and of HF BpeTrainer (same vocab size, same Split
     regex + ByteLevel, same specials, min frequency 2), with bytes/token on held-out text;
  2. encoding MB/s with N threads: jarip encode_batch (Rust, release), HF encode_batch on the
     same tokenizer.json, tiktoken cl100k encode_ordinary_batch;
  3. bytes/token on held-out Korean and English: ours, GPT-2, cl100k, o200k (tiktoken, tables
     loaded from the tiktoken-rs crate's files, since tiktoken cannot download here);
  4. with --presets: bytes/token for the split variants (digits in groups of 3 vs 1, jarip vs
     gpt4-style split), each trained the same way.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
JARIP_PATTERN = (
    r"'(?:[sdtm]|ll|ve|re)| ?[\p{L}\p{M}]+| ?\p{N}{1,3}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+"
)


def args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", type=Path)
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-jsonl", type=Path)
    p.add_argument("--presets", action="store_true", help="also train the split variants")
    p.add_argument("--out", type=Path, help="write all figures as JSON here")
    return p


def run_measured(cmd, env=None):
    """Runs cmd; returns (seconds, peak RSS in MiB of it and its children, stdout)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    out, err = proc.communicate()
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(map(str, cmd))}\n{err.decode(errors='replace')}")
    return secs, peak / 2**20, out.decode()


def split_corpus(corpus, work):
    """Writes train files and held-out text per language; returns (train_dir, heldout, docs)."""
    train_dir = work / "train"
    train_dir.mkdir()
    held = {"ko": [], "en": [], "other": []}
    docs = []
    files = sorted(p for p in corpus.rglob("*.txt") if p.is_file())
    if not files:
        sys.exit(f"no .txt files under {corpus}")
    for i, f in enumerate(files):
        parts = f.relative_to(corpus).parts
        lang = parts[0] if len(parts) > 1 and parts[0] in ("ko", "en") else "other"
        text = unicodedata.normalize("NFC", f.read_bytes().decode("utf-8", errors="replace"))
        lines = text.splitlines(keepends=True)
        cut = max(1, len(lines) * 9 // 10) if len(lines) > 1 else len(lines)
        train, rest = "".join(lines[:cut]), "".join(lines[cut:])
        (train_dir / f"{i:05d}_{lang}_{f.stem}.txt").write_text(train, encoding="utf-8")
        held[lang].append(rest)
        # Documents for the throughput run: paragraphs of ~20 lines.
        for j in range(0, len(lines), 20):
            docs.append("".join(lines[j : j + 20]))
    heldout = {}
    for lang, texts in held.items():
        t = "".join(texts)
        if t.strip():
            heldout[lang] = work / f"heldout_{lang}.txt"
            heldout[lang].write_text(t, encoding="utf-8")
    return train_dir, heldout, docs


def tiktoken_encodings():
    """GPT-2, cl100k and o200k from the tables the tiktoken-rs crate ships (no download)."""
    import tiktoken
    import tiktoken.load
    import tiktoken_ext.openai_public as oai

    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--manifest-path", str(ROOT / "bench" / "tokenizer" / "tiktoken-assets" / "Cargo.toml")],
            capture_output=True,
            check=True,
        ).stdout
    )
    pkg = [p for p in meta["packages"] if p["name"] == "tiktoken-rs"]
    if not pkg:
        raise RuntimeError("tiktoken-rs is not in the cargo metadata")
    assets = Path(pkg[0]["manifest_path"]).parent / "assets"

    def local(blobpath, expected_hash=None):
        return (assets / os.path.basename(blobpath)).read_bytes()

    tiktoken.load.read_file_cached = local
    out = {}
    for name, ctor in [("gpt2", oai.gpt2), ("cl100k", oai.cl100k_base), ("o200k", oai.o200k_base)]:
        out[name] = tiktoken.Encoding(**ctor())
    return out


def hf_train_script(train_files, vocab, pattern, out):
    return f"""
from tokenizers import Tokenizer, Regex, models, pre_tokenizers, decoders, trainers
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex({pattern!r}), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size={vocab}, min_frequency=2, show_progress=False,
    special_tokens={SPECIALS!r}, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train({[str(f) for f in train_files]!r}, trainer)
tok.save({str(out)!r})
"""


def best_of(fn, repeat=3):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bytes_per_token(n_bytes, n_tokens):
    return n_bytes / max(1, n_tokens)


def main():
    a = args_parser().parse_args()
    os.environ["RAYON_RS_NUM_CPUS"] = str(a.threads)  # HF tokenizers' thread count
    os.environ["RAYON_NUM_THREADS"] = str(a.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    from tokenizers import Tokenizer

    print("building jarip examples (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "jarip-tokenizer", "--examples"], cwd=ROOT, check=True)
    cli = ROOT / "target/release/examples/tokenizer_cli"
    enc_bench = ROOT / "target/release/examples/encode_bench"
    res = {"vocab_size": a.vocab_size, "threads": a.threads}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_dir, heldout, docs = split_corpus(a.corpus, work)
        train_inputs = [a.train_jsonl] if a.train_jsonl else sorted(train_dir.glob("*.txt"))
        if a.train_jsonl:  # HF trains on text files: write the docs out
            hf_text = work / "train_from_jsonl.txt"
            with open(a.train_jsonl, encoding="utf-8") as f, open(hf_text, "w", encoding="utf-8") as g:
                for line in f:
                    if line.strip():
                        g.write(json.loads(line)["text"] + "\n")
            hf_inputs = [hf_text]
        else:
            hf_inputs = train_inputs
        train_bytes = sum(Path(p).stat().st_size for p in hf_inputs)
        res["train_bytes"] = train_bytes
        res["heldout_bytes"] = {k: v.stat().st_size for k, v in heldout.items()}
        docs_path = work / "docs.jsonl"
        with open(docs_path, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")

        env = dict(os.environ)
        # 1. Training.
        tok_dir = work / "jarip_tok"
        jin = [str(a.train_jsonl)] if a.train_jsonl else [str(train_dir)]
        secs, rss, _ = run_measured(
            [str(cli), "tokenizer", "train", *jin, "--vocab-size", str(a.vocab_size), "--out", str(tok_dir)], env
        )
        res["train"] = {"jarip": {"seconds": secs, "peak_rss_mib": rss}}
        hf_json = work / "hf_tokenizer.json"
        script = hf_train_script(hf_inputs, a.vocab_size, JARIP_PATTERN, hf_json)
        secs, rss, _ = run_measured([sys.executable, "-c", script], env)
        res["train"]["hf"] = {"seconds": secs, "peak_rss_mib": rss}

        ours_hf = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        theirs = Tokenizer.from_file(str(hf_json))
        texts = {k: v.read_bytes().decode("utf-8") for k, v in heldout.items()}
        stats = json.loads(
            subprocess.run(
                [str(enc_bench), "--tokenizer", str(tok_dir), *sum([["--stats", str(p)] for p in heldout.values()], [])],
                capture_output=True,
                check=True,
            ).stdout
        )["stats"]
        bpt = {}
        for lang, path in heldout.items():
            n = len(texts[lang].encode("utf-8"))
            ours_ids = ours_hf.encode(texts[lang], add_special_tokens=False).ids
            bpt.setdefault("jarip", {})[lang] = stats[str(path)]["bytes_per_token"]
            assert stats[str(path)]["tokens"] == len(ours_ids), "HF and jarip disagree on our tokenizer"
            bpt.setdefault("hf_trained", {})[lang] = bytes_per_token(n, len(theirs.encode(texts[lang]).ids))
        # 3. Reference tokenizers.
        try:
            encs = tiktoken_encodings()
        except Exception as e:  # noqa: BLE001 - report and go on without them
            print(f"tiktoken encodings unavailable: {e}", file=sys.stderr)
            encs = {}
        for name, enc in encs.items():
            for lang in heldout:
                n = len(texts[lang].encode("utf-8"))
                bpt.setdefault(name, {})[lang] = bytes_per_token(n, len(enc.encode_ordinary(texts[lang])))
        res["bytes_per_token"] = bpt

        # 2. Encoding throughput.
        total = sum(len(d.encode("utf-8")) for d in docs) / 1e6
        eb = json.loads(
            subprocess.run(
                [str(enc_bench), "--tokenizer", str(tok_dir), "--docs", str(docs_path), "--threads", str(a.threads)],
                capture_output=True,
                check=True,
            ).stdout
        )
        thr = {"jarip": eb["mb_s"], "jarip_cold": eb["cold_mb_s"]}
        thr["hf_tokenizers"] = total / best_of(lambda: ours_hf.encode_batch(docs, add_special_tokens=False))
        if "cl100k" in encs:
            cl = encs["cl100k"]
            thr["tiktoken_cl100k"] = total / best_of(lambda: cl.encode_ordinary_batch(docs, num_threads=a.threads))
        res["encode_mb_s"] = thr
        res["encode_corpus_mb"] = total

        # 4. Split variants.
        if a.presets:
            var = {}
            for preset in ["jarip", "jarip-digits1", "gpt4", "gpt2"]:
                d = work / f"tok_{preset}"
                subprocess.run(
                    [str(cli), "tokenizer", "train", *jin, "--vocab-size", str(a.vocab_size), "--out", str(d),
                     "--preset", preset],
                    check=True,
                    capture_output=True,
                )
                out = subprocess.run(
                    [str(enc_bench), "--tokenizer", str(d), *sum([["--stats", str(p)] for p in heldout.values()], [])],
                    capture_output=True,
                    check=True,
                ).stdout
                st = json.loads(out)["stats"]
                var[preset] = {lang: st[str(p)]["bytes_per_token"] for lang, p in heldout.items()}
            res["split_variants_bytes_per_token"] = var

    report(res)
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


def report(r):
    print(f"\n== tokenizer benchmark: vocab {r['vocab_size']}, {r['threads']} threads, "
          f"train {r['train_bytes'] / 1e6:.2f} MB, held-out {r['heldout_bytes']} ==")
    tj, th = r["train"]["jarip"], r["train"]["hf"]
    langs = list(r["bytes_per_token"]["jarip"])
    print("\n1. training            seconds   peak RSS MiB   " + "   ".join(f"B/tok {l}" for l in langs))
    for name, t, key in [("jarip", tj, "jarip"), ("HF BpeTrainer", th, "hf_trained")]:
        b = "   ".join(f"{r['bytes_per_token'][key][l]:9.3f}" for l in langs)
        print(f"   {name:18s} {t['seconds']:8.2f}   {t['peak_rss_mib']:12.1f}   {b}")
    print(f"   speed-up jarip vs HF: {th['seconds'] / tj['seconds']:.2f}x")
    e = r["encode_mb_s"]
    print(f"\n2. encoding MB/s ({r['encode_corpus_mb']:.1f} MB, best of 3 after warm-up)")
    for k, v in e.items():
        print(f"   {k:18s} {v:8.2f}")
    print("\n3. bytes/token on held-out text (ratio to ours)")
    print("   " + " " * 18 + "".join(f"{l:>18s}" for l in langs))
    ours = r["bytes_per_token"]["jarip"]
    for name, row in r["bytes_per_token"].items():
        cells = "".join(f"{row[l]:9.3f} ({row[l] / ours[l]:4.2f}x)" for l in langs)
        print(f"   {name:18s}{cells}")
    if "split_variants_bytes_per_token" in r:
        print("\n4. split variants, bytes/token on held-out text")
        for name, row in r["split_variants_bytes_per_token"].items():
            print(f"   {name:18s}" + "".join(f"{row[l]:9.3f}" for l in langs))


if __name__ == "__main__":
    main()
