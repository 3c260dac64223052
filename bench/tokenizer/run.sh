#!/usr/bin/env bash
# Tokenizer benchmark. Usage: bench/tokenizer/run.sh [CORPUS_DIR] [bench.py options...]
# CORPUS_DIR defaults to data/demo (Korean in ko/, English in en/).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
corpus="${1:-$root/data/demo}"
shift || true
venv="${BENCH_VENV:-$root/target/bench-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$root/bench/requirements.txt"
fi
cd "$root"
exec "$venv/bin/python" "$here/bench.py" "$corpus" "$@"
