#!/usr/bin/env bash
# cargo bench of two commits side by side, in one run (like Go's benchcmp, but alternating
# A B A B ... so the VM's drift hits both alike). Builds the hot_path bench at each commit
# (git worktrees under target/bench-ab, one shared target directory), runs each binary
# ROUNDS times pinned to CPU 1, and prints criterion's median estimate per benchmark:
# the median over rounds for each side, and the ratio NEW/BASE.
#
#   scripts/bench-ab.sh [-r ROUNDS] [-f FILTER] [-i] [-o FILE] BASE [NEW]
#
# BASE and NEW are commits (NEW defaults to HEAD); FILTER is a criterion filter (a regex,
# default: every benchmark). Each round of every benchmark takes ~3 s.
# -i counts instructions instead (valgrind's callgrind; this VM's noise does not touch
# them): per call of App::leftpad, i.e. per request for `-f '^request/whole$'`, from two
# runs per side whose difference leaves set-up out (needs valgrind; -r does not apply).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5 filter='' out='' instructions=''
while getopts "r:f:io:" opt; do
  case $opt in
    r) rounds=$OPTARG ;; f) filter=$OPTARG ;; o) out=$OPTARG ;; i) instructions=1 ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,14p' "$0"; exit 2; }
[ -z "$instructions" ] || command -v valgrind >/dev/null ||
  { echo "bench-ab.sh: -i needs valgrind: apt-get install valgrind" >&2; exit 1; }
base=$(git rev-parse --short "$1") new=$(git rev-parse --short "${2:-HEAD}")

work=target/bench-ab
mkdir -p "$work"
export CARGO_TARGET_DIR=$PWD/$work/target
build() { # commit -> path of its bench binary, copied out of the shared target directory
  local commit=$1 tree=$work/tree-$1
  # A commit's binary is built once (from a clean tree at that commit, by this toolchain
  # with these flags) and kept.
  local kept=$work/hot_path-$commit-$toolchain
  [ -x "$kept" ] && { echo "$kept"; return; }
  [ -d "$tree" ] || git worktree add --detach --quiet "$tree" "$commit"
  # The trees share one target directory and cargo names their outputs alike, so a tree
  # built before could be taken as fresh with the other tree's binary: its sources are
  # made newer than anything built.
  find "$tree/src" "$tree/benches" "$tree/build.rs" "$tree/Cargo.toml" -exec touch {} + 2>/dev/null || true
  local bin
  bin=$(cd "$tree" && cargo bench --bench hot_path --no-run 2>&1 |
    sed -n 's/.*Executable.*(\(.*hot_path-[0-9a-f]*\)).*/\1/p' | tail -1)
  [ -n "$bin" ] || { echo "bench-ab.sh: building $commit failed" >&2; exit 1; }
  cp "$bin" "$kept.part" && mv "$kept.part" "$kept"
  echo "$kept"
}
toolchain=$( (rustc -vV; echo "${RUSTFLAGS:-}") | md5sum | cut -c1-8)
bin_base=$(build "$base")
bin_new=$(build "$new")

raw=$(mktemp)
trap 'rm -f "$raw" "$raw".cg1 "$raw".cg3 "$raw".log' EXIT
if [ -n "$instructions" ]; then
  # Two runs per side, of 1 s and 3 s: the difference of their instruction totals over
  # the difference of their App::leftpad calls (one per request) leaves set-up out.
  for side in base new; do
    bin=$bin_base
    [ $side = new ] && bin=$bin_new
    for seconds in 1 3; do
      taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$raw.cg$seconds" \
        "$bin" --bench --profile-time $seconds ${filter:+"$filter"} >"$raw.log" 2>&1 ||
        { tail -20 "$raw.log" >&2; echo "bench-ab.sh: callgrind of $side failed" >&2; exit 1; }
    done
    python3 - "$raw.cg1" "$raw.cg3" $side >>"$raw" <<'PY'
import re, sys
def count(path):
    """(total instructions, calls of App::leftpad) of one callgrind output."""
    names, fn, calls, total, requests = {}, "", None, 0, 0
    for line in open(path):
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1) == "cfn":
                fn = names.get(m.group(2), "")
            continue
        if line.startswith("totals:") or line.startswith("summary:"):
            total = int(line.split()[1])
        m = re.match(r"^calls=(\d+)", line)
        if m:
            calls = int(m.group(1))
        elif calls is not None:
            if fn.endswith("App::leftpad"):
                requests += calls
            calls = None
    return total, requests
(ir1, n1), (ir3, n3) = count(sys.argv[1]), count(sys.argv[2])
if n3 <= n1:
    sys.exit("bench-ab.sh: no calls of App::leftpad counted: -i needs a filter that "
             "answers requests, such as '^request/whole$'")
print(sys.argv[3], "instructions/request", (ir3 - ir1) / (n3 - n1))
PY
    echo "$side counted" >&2
  done
else
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
fi

{
  how="$rounds alternating rounds, taskset -c 1"
  [ -z "$instructions" ] || how="instructions counted by callgrind${filter:+ for $filter}"
  echo "# bench-ab.sh $(date -u +%FT%TZ): base $base vs new $new, $how"
  echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  python3 - "$raw" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, name, ns = line.split()
    runs.setdefault(name, {}).setdefault(side, []).append(float(ns))
unit = "ns" if "instructions/request" not in runs else "Ir"
print(f"{'benchmark':<36}{'base ' + unit:>10}{'new ' + unit:>10}{'new/base':>10}")
for name, sides in runs.items():
    b, n = statistics.median(sides.get("base", [0])), statistics.median(sides.get("new", [0]))
    print(f"{name:<36}{b:>10.1f}{n:>10.1f}{n / b if b else 0:>10.3f}")
PY
} | if [ -n "$out" ]; then tee "$out"; else cat; fi
