"""scripts/gpu-check's dry run works on a machine without a GPU, as in CI: it checks its arguments,
lists what would travel to the GPU machine, prepares the demo shards on the CPU with the jarip
under test, and writes the --run plan's summary with every GPU step skipped. (The GPU steps
themselves need a GPU and `scripts/gpu-check --build`; see bench/gpu/README.md.)"""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"


def run(args, tmp_path, **env):
    e = dict(os.environ)
    e["JARIP_GPU_PACK"] = str(tmp_path / "pack")
    if os.environ.get("JARIP_BIN"):
        e["JARIP_CPU_BIN"] = os.environ["JARIP_BIN"]
    e.update(env)
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)


def test_dry_run_prepares_the_shards_and_writes_the_plan(tmp_path):
    out = tmp_path / "out"
    r = run(["--dry-run", str(out)], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (out / "summary.md").read_text()
    # Every step of the real run appears, in order, none of them run.
    steps = ["parity", "nccl", "throughput-d12-composed", "throughput-d12-fused", "throughput-d12-pytorch",
             "throughput-d20-composed", "throughput-d20-fused", "throughput-d20-pytorch", "speedrun", "verify"]
    at = [summary.index(f"**{s}**") for s in steps]
    assert at == sorted(at), summary
    assert summary.count("dry run, not run") == len(steps), summary
    assert "--dist nccl" in summary and "--device cuda" in summary
    assert "bench/train/train_ref.py --device cuda --bf16" in summary
    # The CPU-side preparation happened: a tokenizer and shards with their ledger, ready to travel.
    demo = tmp_path / "pack" / "demo"
    assert (demo / "tokenizer" / "tokenizer.json").is_file()
    assert (demo / "shards" / "manifest.json").is_file()
    assert sum(1 for _ in (demo / "shards").glob("*.bin")) >= 2
    assert "demo shards:" in summary and "what travels" in summary
    assert "nothing built yet" in summary or "bin/jarip" in summary


def test_bad_arguments_fail_with_the_usage(tmp_path):
    for args in ([], ["--run"], ["--dry-run"], ["--frobnicate"], ["--build", "extra"]):
        r = run(args, tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "gpu-check --build" in r.stdout, r.stdout
    assert not (tmp_path / "pack").exists(), "a refused command prepared nothing"


def test_run_without_a_build_says_what_to_do(tmp_path):
    r = run(["--run", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 1
    assert "run scripts/gpu-check --build first" in r.stderr


def test_the_gpu_steps_refuse_clearly_without_cuda():
    jarip = os.environ.get("JARIP_BIN") or str(ROOT / "target" / "debug" / "jarip")
    for sub in (["parity"], ["throughput", "--depth", "2"]):
        r = subprocess.run([jarip, "gpu-check", *sub], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        assert "cannot open CUDA device 0" in r.stderr and "--features cuda" in r.stderr, r.stderr
