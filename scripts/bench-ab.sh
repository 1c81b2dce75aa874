#!/usr/bin/env bash
# cargo bench of two commits side by side, in one run (like Go's benchcmp, but alternating
# A B A B ... so the VM's drift hits both alike). Builds the hot_path bench at each commit
# (git worktrees under target/bench-ab, one shared target directory), runs each binary
# ROUNDS times pinned to CPU 1, and prints criterion's median estimate per benchmark:
# the median over rounds for each side, and the ratio NEW/BASE.
#
#   scripts/bench-ab.sh [-r ROUNDS] [-f FILTER] [-o FILE] BASE [NEW]
#
# BASE and NEW are commits (NEW defaults to HEAD); FILTER is a criterion filter (a regex,
# default: every benchmark). Each round of every benchmark takes ~3 s.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5 filter='' out=''
while getopts "r:f:o:" opt; do
  case $opt in
    r) rounds=$OPTARG ;; f) filter=$OPTARG ;; o) out=$OPTARG ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,11p' "$0"; exit 2; }
base=$(git rev-parse --short "$1") new=$(git rev-parse --short "${2:-HEAD}")

work=target/bench-ab
mkdir -p "$work"
export CARGO_TARGET_DIR=$PWD/$work/target
build() { # commit -> path of its bench binary, copied out of the shared target directory
  local commit=$1 tree=$work/tree-$1
  [ -d "$tree" ] || git worktree add --detach --quiet "$tree" "$commit"
  local bin
  bin=$(cd "$tree" && cargo bench --bench hot_path --no-run 2>&1 |
    sed -n 's/.*Executable.*(\(.*hot_path-[0-9a-f]*\)).*/\1/p' | tail -1)
  [ -n "$bin" ] || { echo "bench-ab.sh: building $commit failed" >&2; exit 1; }
  cp "$bin" "$work/hot_path-$commit"
  echo "$work/hot_path-$commit"
}
bin_base=$(build "$base")
bin_new=$(build "$new")

raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
for round in $(seq "$rounds"); do
  for side in base new; do
    bin=$bin_base
    [ $side = new ] && bin=$bin_new
    taskset -c 1 "$bin" --bench ${filter:+"$filter"} 2>/dev/null |
      awk -v side=$side '
        # criterion puts a long name on a line of its own, and "time:" on the next.
        $1 == "time:" { name = prev; v = $4; u = $5 }
        $2 == "time:" { name = $1; v = $5; u = $6 }
        $1 == "time:" || $2 == "time:" { if (u == "µs") v *= 1000; if (u == "ms") v *= 1e6; print side, name, v }
        { prev = $1 }' >>"$raw"
  done
  echo "round $round/$rounds done" >&2
done

{
  echo "# bench-ab.sh $(date -u +%FT%TZ): base $base vs new $new, $rounds alternating rounds, taskset -c 1"
  echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  python3 - "$raw" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, name, ns = line.split()
    runs.setdefault(name, {}).setdefault(side, []).append(float(ns))
print(f"{'benchmark':<36}{'base ns':>10}{'new ns':>10}{'new/base':>10}")
for name, sides in runs.items():
    b, n = statistics.median(sides.get("base", [0])), statistics.median(sides.get("new", [0]))
    print(f"{name:<36}{b:>10.1f}{n:>10.1f}{n / b if b else 0:>10.3f}")
PY
} | if [ -n "$out" ]; then tee "$out"; else cat; fi
