#!/usr/bin/env bash
# A profile-guided build of the server: an instrumented build answers a training load, and
# the server is built again with the profile it wrote.
#
#   scripts/pgo.sh [--target-cpu CPU] [--bench [CRITERION ARGS...]]
#
# The training load (about 12 s, one worker on CPU 0, wrk on CPU 1, loopback only): the
# article's request with 16 pipelined and with 64 connections, escaped and bad queries, an
# unknown path and /healthz, with the access log and StatsD on. The optimized server is
# target/pgo/leftpad. With --bench, the benchmarks are then built with the same profile
# and run (`cargo bench --bench hot_path` with the arguments that follow).
#
# --target-cpu builds for that CPU and later ones only (rustc's -C target-cpu), into
# target/pgo-CPU: with x86-64-v3 (AVX2: Haswell, Zen and later), httparse takes its AVX2
# path without a check at run time, and the binary does not start on older CPUs.
#
# Needs wrk, curl, python3 and the toolchain's llvm-profdata (rustup component llvm-tools,
# added if missing). Measured in bench-results/runs/2026-12-02-af9754f-pgo.
set -euo pipefail
cd "$(dirname "$0")/.."

bench='' target_cpu=''
if [ "${1:-}" = --target-cpu ]; then
  target_cpu=${2:?--target-cpu needs a CPU name, such as x86-64-v3 (rustc --print target-cpus lists them)}
  shift 2
fi
if [ "${1:-}" = --bench ]; then
  bench=1
  shift
fi
for tool in wrk curl python3 taskset; do
  command -v "$tool" >/dev/null || { echo "pgo.sh: $tool is not installed (apt-get install wrk curl python3 util-linux)" >&2; exit 1; }
done

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "pgo.sh: adding the toolchain's llvm-tools (llvm-profdata)" >&2
  rustup component add llvm-tools
  [ -x "$profdata" ] || { echo "pgo.sh: no llvm-profdata at $profdata after adding llvm-tools" >&2; exit 1; }
fi

pgo=$PWD/target/pgo${target_cpu:+-$target_cpu}
rm -rf "$pgo/profiles"
mkdir -p "$pgo/profiles"
# RUSTFLAGS replaces .cargo/config.toml's rustflags, so its frame pointers are repeated.
flags="-C force-frame-pointers=yes${target_cpu:+ -C target-cpu=$target_cpu}"

echo "pgo.sh: building the instrumented server" >&2
RUSTFLAGS="$flags -Cprofile-generate=$pgo/profiles" \
  cargo build --release --quiet --bin leftpad --target-dir "$pgo/generate"

source scripts/lib.sh
workdir=$(mktemp -d)
trap 'stop_server; stop_statsd_sink; rm -rf "$workdir"' EXIT
start_statsd_sink

echo "pgo.sh: training it (about 12 s)" >&2
addr="127.0.0.1:$(free_port)"
LLVM_PROFILE_FILE="$pgo/profiles/leftpad-%p-%m.profraw" \
  start_server "$pgo/generate/release/leftpad" "$addr" "$workdir" \
  --access-log "$workdir/access.log" --statsd "127.0.0.1:$sink_port" --admin off
cat >"$workdir/pipeline.lua" <<'LUA'
init = function(args) req = string.rep(wrk.format(nil), tonumber(args[1]) or 1) end
request = function() return req end
LUA
load() { # seconds connections url [pipeline depth]
  taskset -c "$load_cpu" wrk -t1 -c"$2" -d"$1s" -s "$workdir/pipeline.lua" "$3" -- "${4:-1}" >/dev/null
}
article="http://$addr$bench_path"
load 3 64 "$article" 16
load 3 64 "$article"
for query in 'str=hello+w%C3%B6rld%21&len=50&chr=%E2%98%83' 'str=a&len=x' 'len=5' 'str=%ZZ&len=3'; do
  load 1 8 "http://$addr/v1/leftpad/?$query"
done
load 1 8 "http://$addr/nope"
load 1 8 "http://$addr/healthz"
# The profile is written as the server exits.
stop_server
compgen -G "$pgo/profiles/*.profraw" >/dev/null ||
  { echo "pgo.sh: the instrumented server wrote no profile:" >&2; cat "$workdir/server.log" >&2; exit 1; }
"$profdata" merge -o "$pgo/leftpad.profdata" "$pgo/profiles"

echo "pgo.sh: building the server with its profile" >&2
use="$flags -Cprofile-use=$pgo/leftpad.profdata"
RUSTFLAGS="$use" cargo build --release --quiet --bin leftpad --target-dir "$pgo/use"
cp "$pgo/use/release/leftpad" "$pgo/leftpad"
echo "pgo.sh: $pgo/leftpad (profile: $pgo/leftpad.profdata)"

if [ -n "$bench" ]; then
  RUSTFLAGS="$use" cargo bench --bench hot_path --target-dir "$pgo/use" -- "$@"
fi
