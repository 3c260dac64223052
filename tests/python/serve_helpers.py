"""Shared by the serving tests: a tiny model trained by the jarip binary, and a running server.

The model goes through the real pipeline (prepare → tokenizer → shards → a few pretraining
steps), so the server loads exactly what users serve, manifest and ledger included.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import threading
from pathlib import Path

import pytest

KO = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다. "
EN = "All the world's a stage, and all the men and women merely players. "


def jarip_cmd():
    bin_ = os.environ.get("JARIP_BIN")
    if not bin_:
        pytest.fail("JARIP_BIN is not set: run the tests through scripts/test")
    return shlex.split(bin_)


def run(*args):
    subprocess.run(jarip_cmd() + [str(a) for a in args], check=True, capture_output=True)


def tiny_model(root: Path, model: dict | None = None, preset: str = "jarip") -> Path:
    """A model pretrained for a few steps; returns its run directory.

    Depth 1 by default; `model` sets every field of a jarip model config instead (written as the
    file `pretrain --config` reads) but vocab_size, which is the trained tokenizer's.
    """
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for i in range(40):
        (corpus / f"doc{i:02}.txt").write_text(f"{KO * (1 + i % 3)} {EN} 제{i}조 number {i * 37}\n", encoding="utf-8")
    run_dir = root / "tiny"
    run("data", "prepare", corpus, "--out", run_dir / "prepared")
    run("tokenizer", "train", run_dir / "prepared", "--vocab-size", "400", "--out", run_dir / "tokenizer", "--preset", preset)
    run("data", "shard", run_dir / "prepared", "--tokenizer", run_dir / "tokenizer", "--out", run_dir / "shards")
    shape = ["--depth", "1"]
    if model is not None:
        manifest = json.loads((run_dir / "tokenizer" / "manifest.json").read_text())
        config = root / "model.json"
        config.write_text(json.dumps({"vocab_size": manifest["settings"]["vocab_size"], **model}))
        shape = ["--config", config]
    run(
        "pretrain", "--data", run_dir / "shards", "--out", run_dir, *shape, "--max-steps", "10",
        "--seq-len", "32", "--batch-size", "4", "--eval-every", "0", "--eval-tokens", "256",
        "--sample-every", "0", "--warmup-steps", "2", "--no-progress",
    )
    return run_dir


class Server:
    """`jarip serve` on a free loopback port; stopped with SIGTERM (graceful) on exit."""

    def __init__(self, model: Path, *args: str):
        self.proc = subprocess.Popen(
            jarip_cmd() + ["serve", "--model", str(model), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        m = re.search(r"http://[^\s/]+", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"jarip serve did not start: {line!r} {self.proc.stderr.read()}")
        self.url = m.group(0)
        # Keep draining the pipes so the server never blocks on a full one.
        for pipe in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=pipe.read, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
