#!/usr/bin/env bash
# One wrk load run against one server, each pinned to its own CPU, loopback only.
#
#   scripts/load.sh [-c CONNS] [-d SECONDS] [-t THREADS] [-p PIPELINE] [-u PATH]
#                   [-w SECONDS] [-s leftpad|floor|nginx] [-o RAW_OUTPUT_FILE]
#                   [-- EXTRA SERVER ARGS]
#
# Starts the server on CPU 0 (taskset), wrk on CPU 1, prints one line:
#   server=... conns=... pipeline=... rps=... p50_us=... p90_us=... p99_us=... max_us=...
#   errors=... requests=... cpu_us_per_req=...
# cpu_us_per_req is the server's utime+stime (from /proc/PID/stat, all threads) over the
# run divided by the requests wrk completed. Everything stops by itself: wrk runs for -d
# seconds and the server is killed by PID afterwards.
# With -w W (leftpad only, which then gets an admin port): also steady_cpu_us_per_req, the
# same over the run after its first W seconds, from the server's own request count
# (/debug/vars), so that the connections' setup (the accept burst) is measured apart.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
conns=64 duration=10 threads=1 pipeline=1 server=leftpad out='' warmup=''
while getopts "c:d:t:p:u:s:o:w:" opt; do
  case $opt in
    c) conns=$OPTARG ;; d) duration=$OPTARG ;; t) threads=$OPTARG ;; p) pipeline=$OPTARG ;;
    u) bench_path=$OPTARG ;; s) server=$OPTARG ;; o) out=$OPTARG ;; w) warmup=$OPTARG ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

for tool in wrk taskset curl; do
  command -v "$tool" >/dev/null || { echo "load.sh: $tool is not installed (apt-get install wrk util-linux curl)" >&2; exit 1; }
done

addr="127.0.0.1:$(free_port)"
workdir=$(mktemp -d)
trap 'stop_server; rm -rf "$workdir"' EXIT
admin_args=()
if [ -n "$warmup" ]; then
  case $server in leftpad | leftpad-musl | */*) ;; *) echo "load.sh: -w needs a leftpad server" >&2; exit 2 ;; esac
  admin="127.0.0.1:$(free_port)"
  admin_args=(--admin "$admin")
fi
start_server "$server" "$addr" "$workdir" "$@" "${admin_args[@]}"
pid=$server_pid

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
cat >"$workdir/pipeline.lua" <<LUA
init = function(args)
  local depth = tonumber(args[1]) or 1
  local one = wrk.format(nil)
  req = string.rep(one, depth)
end
request = function() return req end
LUA

# Requests the server has answered so far, from its own counters.
served() { curl -fs "http://$admin/debug/vars" | python3 -c 'import json, sys; print(json.load(sys.stdin)["total"]["requests"]["total"])'; }
before=$(cpu_ticks)
taskset -c "$load_cpu" wrk -t"$threads" -c"$conns" -d"${duration}s" --latency \
  -s "$workdir/pipeline.lua" "http://$addr$bench_path" -- "$pipeline" >"$workdir/wrk.txt" 2>&1 &
wrk_pid=$!
steady=''
if [ -n "$warmup" ]; then
  sleep "$warmup"
  warm_ticks=$(cpu_ticks) warm_served=$(served)
fi
wait "$wrk_pid"
after=$(cpu_ticks)
if [ -n "$warmup" ]; then
  end_served=$(served)
  steady=$(awk -v t=$((after - warm_ticks)) -v n=$((end_served - warm_served)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.3f", (n > 0 ? t / hz * 1e6 / n : 0) }')
fi
[ -n "$out" ] && cp "$workdir/wrk.txt" "$out"

hz=$(getconf CLK_TCK)
awk -v server="$server" -v conns="$conns" -v pipeline="$pipeline" -v ticks=$((after - before)) -v hz="$hz" -v steady="$steady" '
  function us(v) {
    if (v ~ /us$/) return v + 0;
    if (v ~ /ms$/) return v * 1000;
    if (v ~ /s$/) return v * 1000000;
    return v;
  }
  /^ +50%/ { p50 = us($2) } /^ +90%/ { p90 = us($2) } /^ +99%/ { p99 = us($2) }
  /^ +Latency +[0-9]/ { max = us($4) }
  / requests in / { requests = $1 }
  /Requests\/sec:/ { rps = $2 }
  /Socket errors:|Non-2xx/ { errors = errors $0 }
  END {
    cpu = requests > 0 ? ticks / hz * 1e6 / requests : 0;
    gsub(/ +/, " ", errors);
    printf "server=%s conns=%s pipeline=%s rps=%.0f p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f requests=%s cpu_us_per_req=%.3f%s errors=\"%s\"\n",
      server, conns, pipeline, rps, p50, p90, p99, max, requests, cpu,
      steady != "" ? " steady_cpu_us_per_req=" steady : "", errors
  }' "$workdir/wrk.txt"
