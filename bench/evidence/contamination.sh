#!/usr/bin/env bash
# `jarip data contamination` at corpus scale: MB/s of corpus text and peak RSS on a generated
# corpus of GB gigabytes (default 2) in the prepared layout, against two evaluation task files
# (3000 MMLU-layout + 2000 JSONL items, 300 planted), then side by side with a plain Python
# 13-gram check using HF `tokenizers` on the first SUBSET_MB of it (optional: skipped when
# `tokenizers` is not installed), printed as a ratio with the number of items the two disagree on.
#   bench/evidence/contamination.sh [GB]      (WORK=dir, SUBSET_MB=200 override)
set -euo pipefail
cd "$(dirname "$0")/../.."
GB="${1:-2}"
W="${WORK:-target/bench-contamination}"
SUBSET_MB="${SUBSET_MB:-200}"
mkdir -p "$W"

cargo build --release -q -p jarip
J=target/release/jarip
[ -d data/demo/ko ] || "$J" data fetch-demo

# The run's tokenizer: trained on the demo corpus (32768, as bench/tokenizer).
if [ ! -f "$W/tok/tokenizer.json" ]; then
  "$J" data prepare data/demo --out "$W/demo/prepared" >/dev/null
  "$J" tokenizer train "$W/demo/prepared" --vocab-size 32768 --out "$W/demo/tok" >/dev/null
  rm -rf "$W/tok" && cp -r "$W/demo/tok" "$W/tok"
fi

echo "== generating ${GB} GB of corpus and the task files"
python3 bench/evidence/contamination_gen.py --demo data/demo --out "$W" --gb "$GB" --subset-mb "$SUBSET_MB"
tasks=(--task "mmlu=$W/tasks/bench_test.csv" --task "jsonl=$W/tasks/bench_ours.jsonl")

echo "== jarip data contamination on the full corpus"
rm -f "$W/ledger.jsonl"
sync
/usr/bin/time -v "$J" data contamination --corpus "$W/corpus" "${tasks[@]}" --tokenizer "$W/tok" \
  --out "$W/report.json" --ledger "$W/ledger.jsonl" --quiet >"$W/summary.txt" 2>"$W/time.txt"
cat "$W/summary.txt"
grep '^contamination:' "$W/time.txt"
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$W/time.txt")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$W/time.txt")
user=$(awk -F': ' '/User time/ {print $2}' "$W/time.txt")
sys=$(awk -F': ' '/System time/ {print $2}' "$W/time.txt")

python3 - "$W" <<'EOF'
import json, sys
w = sys.argv[1]
r = json.load(open(f"{w}/report.json"))
meta = json.load(open(f"{w}/planted.json"))
kinds = {"bench_test": ["mmlu_full", "mmlu_question"], "bench_ours": ["ours"]}
for t in r["tasks"]:
    items = {i["index"]: i for i in t["items"]}
    for k in kinds[t["name"]]:
        idx = meta["planted"][k]
        flagged = sum(items[i]["contaminated"] for i in idx)
        ngram = sum(items[i]["ngram13"] for i in idx)
        classes = {}
        for i in idx:
            classes[items[i]["class"]] = classes.get(items[i]["class"], 0) + 1
        print(f"planted {k}: {len(idx)}, flagged contaminated {flagged}, 13-gram {ngram}, classes {classes}")
    planted = {i for k in kinds[t["name"]] for i in meta["planted"][k]}
    extra = sum(1 for i in t["items"] if i["contaminated"] and i["index"] not in planted)
    print(f"{t['name']}: {t['n_contaminated']} of {t['n_items']} contaminated ({extra} not planted: chance overlap)")
s = r["scan"]
print(f"scan: {s['documents']} documents, {s['bytes']/1e9:.3f} GB, {s['tokens']} tokens, {s['seconds']:.1f} s, {s['mb_per_s']:.1f} MB/s")
EOF
mb=$(python3 -c "import json; print(json.load(open('$W/report.json'))['scan']['bytes'] / 1e6)")
echo "peak RSS: $((rss_kb / 1024)) MiB; wall ${wall}; user ${user} s, sys ${sys} s:" \
  "$(python3 -c "print(f'{$mb / ($user + $sys):.1f}')") MB per CPU-second"
echo "CPU: $(lscpu | grep 'Model name' | sed 's/Model name: *//'), $(nproc) cores; load average at the end:" \
  "$(cut -d' ' -f1-3 /proc/loadavg) (other processes share the machine: compare MB per CPU-second)"

echo "== side by side on the first ${SUBSET_MB} MB: jarip vs Python + HF tokenizers (13-gram rule)"
/usr/bin/time -v "$J" data contamination --corpus "$W/subset" "${tasks[@]}" --tokenizer "$W/tok" \
  --out "$W/report-subset.json" --ledger "$W/ledger.jsonl" --quiet >/dev/null 2>"$W/time-subset.txt"
set +e
ref=$(/usr/bin/time -v -o "$W/time-ref.txt" python3 bench/evidence/contamination_ref.py \
  --tokenizer "$W/tok/tokenizer.json" --corpus "$W/subset" \
  --mmlu "$W/tasks/bench_test.csv" --ours "$W/tasks/bench_ours.jsonl" --compare "$W/report-subset.json")
rc=$?
set -e
if [ $rc -ne 0 ]; then
  echo "reference skipped (exit $rc)"
  exit 0
fi
python3 - "$W" "$ref" <<'EOF'
import json, sys
w, r = sys.argv[1], json.loads(sys.argv[2])
def fields(f):
    t = {}
    for line in open(f):
        k, _, v = line.strip().rpartition(": ")
        t[k] = v
    return float(t["User time (seconds)"]) + float(t["System time (seconds)"]), int(t["Maximum resident set size (kbytes)"]) // 1024
jcpu, jrss = fields(f"{w}/time-subset.txt")
rcpu, rrss = fields(f"{w}/time-ref.txt")
s = json.load(open(f"{w}/report-subset.json"))["scan"]
mb = s["bytes"] / 1e6
print(f"jarip: {s['mb_per_s']:.1f} MB/s, {mb / jcpu:.1f} MB per CPU-second, peak RSS {jrss} MiB")
print(f"Python + tokenizers: {r['mb_per_s']:.1f} MB/s, {mb / rcpu:.1f} MB per CPU-second, peak RSS {rrss} MiB; "
      f"13-gram items {r['ngram13']}")
print(f"ratio jarip / reference: {s['mb_per_s'] / r['mb_per_s']:.1f}x in MB/s, {rcpu / jcpu:.1f}x in CPU time; "
      f"items whose 13-gram flag differs: {r['disagreements']}")
EOF
