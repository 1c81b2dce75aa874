#!/usr/bin/env bash
# Soak: steady wrk load from well-behaved clients while hostile clients (scripts/hostile.py:
# slowloris, vanishing clients, floods that never read, oversized heads, garbage,
# connection churn, held connections) run at the same time, the access log is rotated as
# logrotate does it and CPU profiles are taken; then SIGTERM.
#
#   scripts/soak.sh [-d SECONDS] [-r ROTATE_S] [-p PROFILE_S] [-m RSS_LIMIT_MIB]
#                   [-i IDLE_CONNECTIONS] [-o DIR]
#
# The 10-minute soak (issue 13): scripts/soak.sh -d 600. Default: 60 s of load.
# Every ROTATE_S (default 10) the access log is renamed to access.log.N and the server gets
# SIGHUP (it reopens the path); once per PROFILE_S (default 60; 0: none), in the middle of
# each such window, a 5 s CPU profile is taken from /debug/pprof/profile; RSS is sampled
# every 10 s. SIGTERM arrives 5 s before the load ends, with everything still running.
# Fails (exit 1) unless: the server never died before it; it then exited 0 within its
# shutdown timeout; every well-behaved response was correct; peak RSS stayed under the
# limit; RSS was flat after warm-up (the first 20% of the load, at least 30 s and past the
# first profile, which makes the server load its symbols once): the last sample at most 10%
# and at most 8 MiB above the smallest one since; every rotation found the reopened log; the
# access log, all its files together, has one whole line (6 fields) per request the server
# says it answered; StatsD (rate 1) counted every /v1/leftpad request the log shows; every
# profile is a gzip'd pprof with samples (that `go tool pprof -top` reads, if go is
# installed). Also measures memory per idle keep-alive connection.
# Output: DIR/soak.txt and DIR/rss.txt (default DIR bench-results/runs/<date>-<commit>-soak).
# Bounded: SECONDS of load plus setup (about 30 s) and the log count at the end; disk:
# rotated logs are counted and deleted as the run goes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

duration=60 rotate=10 profile_every=60 rss_limit_mib=256 idle=10000 outdir=''
while getopts "d:r:p:m:i:o:" opt; do
  case $opt in
    d) duration=$OPTARG ;; r) rotate=$OPTARG ;; p) profile_every=$OPTARG ;;
    m) rss_limit_mib=$OPTARG ;; i) idle=$OPTARG ;; o) outdir=$OPTARG ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
  esac
done
profile_s=5 rss_every=10
[ "$duration" -ge 20 ] || { echo "soak.sh: -d must be at least 20" >&2; exit 2; }
[ "$rotate" -ge 2 ] || { echo "soak.sh: -r must be at least 2 (a worker reopens within ~50 ms)" >&2; exit 2; }
[ "$profile_every" -eq 0 ] || [ "$profile_every" -ge $((profile_s + 1)) ] ||
  { echo "soak.sh: -p must be 0 or at least $((profile_s + 1)) (one profile at a time)" >&2; exit 2; }
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "soak.sh: $tool is not installed (see .ci/run)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"
commit=$(commit_id)
outdir=${outdir:-bench-results/runs/$(date -u +%Y-%m-%d)-$commit-soak}
mkdir -p "$outdir"
cargo build --release --quiet --bin leftpad

workdir=$(mktemp -d)
pids=()
trap 'stop_server; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$workdir"' EXIT
report() { echo "$*" | tee -a "$outdir/soak.txt"; }
failures=0
check() { # check NAME DETAIL COMMAND...: PASS if the command succeeds
  local name=$1 detail=$2
  shift 2
  if "$@"; then report "PASS $name: $detail"; else report "FAIL $name: $detail"; failures=$((failures + 1)); fi
}
: >"$outdir/soak.txt"
report "soak.sh -d $duration -r $rotate -p $profile_every -m $rss_limit_mib -i $idle, commit $commit, $(date -u +%FT%TZ)"
report "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"

# A StatsD stand-in that counts the request-count lines it receives.
statsd_port=$(free_port)
python3 - "$statsd_port" "$workdir/statsd.txt" <<'PY' &
import socket, sys, signal
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:  # as root, beyond net.core.rmem_max: the counter must not be what drops packets
    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
s.bind(("127.0.0.1", int(sys.argv[1])))
open(sys.argv[2] + ".ready", "w").close()
count = 0
def dump(*_):
    with open(sys.argv[2], "w") as f:
        f.write(f"leftpad.request.leftpad.count {count}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, dump)
while True:
    # Per-event lines say `count:1|c`, aggregated ones `count:1234|c`: sum the values.
    for line in s.recv(65536).split(b"\n"):
        if line.startswith(b"leftpad.request.leftpad.count:"):
            count += int(line.split(b":")[1].split(b"|")[0])
PY
statsd_pid=$!
pids+=("$statsd_pid")
for _ in $(seq 100); do [ -e "$workdir/statsd.txt.ready" ] && break; sleep 0.05; done

addr="127.0.0.1:$(free_port)"
admin="127.0.0.1:$(free_port)"
log="$workdir/access.log"
start_server leftpad "$addr" "$workdir" --access-log "$log" --statsd "127.0.0.1:$statsd_port" \
  --statsd-sample-rate 1 --admin "$admin" --max-connections 30000 --header-timeout 5 \
  --idle-timeout 30 --write-timeout 5 --shutdown-timeout 10
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status"; }

# 1. Memory per idle keep-alive connection: each connection sends one request, reads the
# answer and stays open, silent. The server parks a connection idle for 1 s (its task is
# freed, only the socket waits), so RSS is read 3 s after the last one was answered.
rss_before=$(rss_kib)
taskset -c "$load_cpu" python3 - "${addr%:*}" "${addr##*:}" "$idle" <<'PY' >"$workdir/idle.txt" &
import socket, sys, time
request = b"GET /v1/leftpad/?str=idle&len=10 HTTP/1.1\r\nHost: h\r\n\r\n"
held = []
for _ in range(int(sys.argv[3])):
    try:
        sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}\n"):  # the JSON body ends so
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"HTTP/1.1 200"):
            held.append(sock)
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(20)
PY
idle_pid=$!
pids+=("$idle_pid")
for _ in $(seq 300); do [ -s "$workdir/idle.txt" ] && break; sleep 0.1; done
sleep 3
rss_idle=$(rss_kib)
held=$(cat "$workdir/idle.txt" 2>/dev/null || echo 0)
kill "$idle_pid" 2>/dev/null || true
wait "$idle_pid" 2>/dev/null || true
per_conn=$(( (rss_idle - rss_before) * 1024 / (held > 0 ? held : 1) ))
report "idle connections: $held held (each answered once, then silent 3 s), RSS ${rss_before} KiB -> ${rss_idle} KiB: ${per_conn} bytes per idle connection"

# 2. Steady well-behaved load and the hostile mix together; peak RSS sampled twice a second.
( peak=0; while kill -0 "$server_pid" 2>/dev/null; do r=$(rss_kib 2>/dev/null || echo 0); [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" >"$workdir/peak"; sleep 0.5; done ) &
pids+=("$!")
cat >"$workdir/check.lua" <<LUA
bad = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if status ~= 200 or body ~= '{"str":"*********************test"}\n' then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("well-behaved: %d requests, %d bad responses\n", summary.requests, total))
end
LUA
taskset -c "$load_cpu" python3 scripts/hostile.py "${addr%:*}" "${addr##*:}" "$duration" --hold 2000 >"$workdir/hostile.txt" 2>&1 &
hostile_pid=$!
pids+=("$hostile_pid")
taskset -c "$load_cpu" wrk -t1 -c32 -d"${duration}s" -s "$workdir/check.lua" \
  "http://$addr/v1/leftpad/?str=test&len=25&chr=*" >"$workdir/wrk.txt" 2>&1 &
wrk_pid=$!
pids+=("$wrk_pid")
load_start=$SECONDS

# One access-log file counted: whole lines (time, url, ip, ua, status, us: README.md, "Access log"),
# lines for /v1/leftpad, whether the file ends in the middle of a line; into FILE.tally,
# then FILE is deleted (raw logs are scratch; this keeps a long soak's disk use bounded).
# shellcheck disable=SC2016 # an awk program
tally_awk='BEGIN { FS = "\t" }
{
  if (NF != 6 || $1 !~ /^[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]\.[0-9][0-9][0-9]Z$/ ||
      $2 !~ /^url ./ || $3 !~ /^ip [^ ]+$/ || $4 !~ /^ua / || $5 !~ /^status [1-5][0-9][0-9]$/ ||
      $6 !~ /^us [0-9]+$/)
    if (bad++ == 0) example = FILENAME ":" FNR ": " substr($0, 1, 160)
  if (index($2, "url /v1/leftpad") == 1) leftpad++
}
END { printf "%d %d %d %s\n", NR, bad, leftpad, example }'
tally() {
  local f=$1 unterminated=0 counts lines bad leftpad example
  if [ -s "$f" ] && [ "$(tail -c1 "$f" | od -An -tx1 | tr -d ' \n')" != 0a ]; then unterminated=1; fi
  counts=$(nice taskset -c "$load_cpu" awk "$tally_awk" "$f")
  read -r lines bad leftpad example <<<"$counts"
  echo "$lines $bad $leftpad $unterminated ${example:-}" >"$f.tally"
  rm -f "$f"
}

# 3. While the load runs: rotation (rename, then SIGHUP) every $rotate s; RSS every
# $rss_every s; a CPU profile in the middle of every $profile_every s window that ends
# before SIGTERM. Then SIGTERM in the middle of it all, 5 s before the load would end.
term_at=$((duration - 5))
warmup=$((duration / 5 > 30 ? duration / 5 : 30))
# The first profile loads the symbols (DWARF of the binary, kallsyms) once, for good: a
# step in RSS that warm-up includes.
first_profile_end=$((profile_every / 2 + profile_s + 2))
if [ "$profile_every" -gt 0 ] && [ "$first_profile_end" -le "$term_at" ] && [ "$first_profile_end" -gt "$warmup" ]; then
  warmup=$first_profile_end
fi
rotations=0 rotations_missing=0 profiles=0 profile_pids=() tally_pids=()
next_rotate=$rotate next_rss=0 next_profile=$((profile_every / 2)) t=0
: >"$workdir/rss.txt"
while t=$((SECONDS - load_start)); [ "$t" -lt "$term_at" ]; do
  if [ "$t" -ge "$next_rss" ]; then
    echo "$t $(rss_kib 2>/dev/null || echo 0)" >>"$workdir/rss.txt"
    next_rss=$((next_rss + rss_every))
  fi
  if [ "$t" -ge "$next_rotate" ]; then
    rotations=$((rotations + 1))
    # The log must be there again: the server reopened the path after the last SIGHUP.
    mv "$log" "$log.$rotations" 2>/dev/null || rotations_missing=$((rotations_missing + 1))
    kill -HUP "$server_pid" 2>/dev/null || true
    # The file renamed last time is complete: its worker reopened within ~50 ms.
    if [ "$rotations" -gt 1 ] && [ -e "$log.$((rotations - 1))" ]; then
      tally "$log.$((rotations - 1))" &
      tally_pids+=("$!")
      pids+=("$!")
    fi
    next_rotate=$((next_rotate + rotate))
  fi
  if [ "$profile_every" -gt 0 ] && [ "$t" -ge "$next_profile" ]; then
    if [ $((t + profile_s + 1)) -le "$term_at" ]; then
      profiles=$((profiles + 1))
      f="$workdir/profile.$profiles.pb.gz"
      echo "$t" >"$f.at"
      ( rc=0; curl -fsS -m $((profile_s + 20)) -o "$f" \
          "http://$admin/debug/pprof/profile?seconds=$profile_s" 2>"$f.err" || rc=$?; echo "$rc" >"$f.rc" ) &
      profile_pids+=("$!")
      pids+=("$!")
    fi
    next_profile=$((next_profile + profile_every))
  fi
  sleep 0.2
done
echo "$t $(rss_kib 2>/dev/null || echo 0)" >>"$workdir/rss.txt"
for p in "${profile_pids[@]}"; do wait "$p" || true; done
check "server alive" "pid $server_pid still running under the soak" kill -0 "$server_pid"
curl -fsS "http://$admin/debug/vars" | python3 -c 'import json, sys
t = json.load(sys.stdin)["total"]
print("before SIGTERM: requests", t["requests"]["total"], "statsd", t["statsd"], "log", t["access_log"])' |
  tee -a "$outdir/soak.txt" || true
start=$SECONDS
kill -TERM "$server_pid"
code=0
wait "$server_pid" || code=$?
server_pid=''
took=$((SECONDS - start))
check "graceful exit under load" "exit code $code after ${took}s (shutdown timeout 10s)" \
  test "$code" -eq 0 -a "$took" -le 12
wait "$wrk_pid" || true
wait "$hostile_pid" || true
tee -a "$outdir/soak.txt" <"$workdir/hostile.txt"
grep -E "well-behaved|Requests/sec|Socket errors" "$workdir/wrk.txt" | tee -a "$outdir/soak.txt" || true
grep -vE '^leftpad [0-9.]+: listening|SIGTERM: shutting down|stopped after answering' "$workdir/server.log" |
  head -n 20 | sed 's/^/server stderr: /' | tee -a "$outdir/soak.txt" || true

bad=$(awk '/well-behaved/ {print $4}' "$workdir/wrk.txt")
good=$(awk '/well-behaved/ {print $2}' "$workdir/wrk.txt")
check "well-behaved responses" "${good:-0} requests, ${bad:-?} wrong" \
  test "${bad:-1}" -eq 0 -a "${good:-0}" -gt 0
peak=$(cat "$workdir/peak" 2>/dev/null || echo 0)
check "peak RSS" "$((peak / 1024)) MiB (limit $rss_limit_mib MiB)" test "$peak" -lt $((rss_limit_mib * 1024))

# RSS flat after warm-up: the last sample against the smallest since warm-up.
cp "$workdir/rss.txt" "$outdir/rss.txt"
read -r rss_n rss_min rss_max rss_last < <(awk -v w="$warmup" '$1 >= w {
  n++; if (n == 1 || $2 < min) min = $2; if ($2 > max) max = $2; last = $2 }
  END { print n + 0, min + 0, max + 0, last + 0 }' "$workdir/rss.txt")
rss_growth=$((rss_last - rss_min))
check "RSS flat after warm-up" "$rss_n samples every ${rss_every}s from ${warmup}s on (of ${term_at}s to SIGTERM): min $rss_min KiB, max $rss_max KiB, last $rss_last KiB (+$rss_growth KiB; limit +10% and +8192 KiB; series in rss.txt)" \
  test "$rss_n" -ge 2 -a "$rss_growth" -le $((rss_min / 10)) -a "$rss_growth" -le 8192

# Nothing answered may be missing, rotation or not: the server says how many it answered
# when it stops; the lines of access.log and every access.log.N together must match.
# The last SIGHUP too must have been followed by a reopen (it came at least 1 s before SIGTERM).
if [ "$rotations" -ge 1 ] && [ ! -e "$log" ]; then rotations_missing=$((rotations_missing + 1)); fi
check "log rotation" "$rotations rotations every ${rotate}s (rename to access.log.N, SIGHUP), $rotations_missing found no reopened access.log" \
  test "$rotations" -ge 1 -a "$rotations_missing" -eq 0
for p in "${tally_pids[@]}"; do wait "$p" || true; done
shopt -s nullglob
for f in "$log" "$log".*; do
  case $f in *.tally) ;; *) tally "$f" ;; esac
done
files=0 lines=0 torn=0 logged=0 unterminated=0 example=''
for f in "$workdir"/access.log*.tally; do
  read -r l b lp u ex <"$f"
  files=$((files + 1)) lines=$((lines + l)) torn=$((torn + b)) logged=$((logged + lp)) unterminated=$((unterminated + u))
  [ -n "$ex" ] && [ -z "$example" ] && example=$ex
done
shopt -u nullglob
answered=$(sed -n 's/.*stopped after answering \([0-9]*\) requests.*/\1/p' "$workdir/server.log")
check "access log" "$lines lines in $files files (access.log and $rotations rotated), ${answered:-?} requests answered" \
  test "$lines" -eq "${answered:--1}"
check "access log lines whole" "$torn of $lines lines not 6 tab-separated fields (time url ip ua status us), $unterminated files ending mid-line${example:+; first: $example}" \
  test "$torn" -eq 0 -a "$unterminated" -eq 0 -a "$lines" -gt 0
kill -TERM "$statsd_pid"
wait "$statsd_pid" 2>/dev/null || true
counted=$(awk '$1 == "leftpad.request.leftpad.count" {print $2}' "$workdir/statsd.txt")
check "statsd" "leftpad.request.leftpad.count=${counted:-0}, log lines for /v1/leftpad=$logged (all files)" \
  test "${counted:-0}" -eq "$logged"

# The CPU profiles: gzip'd pprof protobuf with samples; `go tool pprof -top` reads each.
profile_stats() { # the sample count, CPU seconds and coverage comment of a pprof profile
  python3 - "$1" <<'PY'
import gzip, sys
def varint(b, i):
    r = s = 0
    while True:
        c = b[i]; i += 1
        r |= (c & 0x7F) << s; s += 7
        if c < 0x80:
            return r, i
def fields(b):
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        f, w = key >> 3, key & 7
        if w == 0: v, i = varint(b, i)
        elif w == 1: v = b[i:i + 8]; i += 8
        elif w == 2:
            n, i = varint(b, i); v = b[i:i + n]; i += n
        elif w == 5: v = b[i:i + 4]; i += 4
        else: raise ValueError(f"wire type {w}")
        yield f, w, v
def ints(w, v):
    if w == 0: return [v]
    out, i = [], 0
    while i < len(v):
        x, i = varint(v, i); out.append(x)
    return out
types, strings, totals = [], [], []
for f, w, v in fields(gzip.open(sys.argv[1]).read()):
    if f == 1:  # sample_type
        t = {ff: vv for ff, _, vv in fields(v)}
        types.append((t.get(1, 0), t.get(2, 0)))
    elif f == 2:  # sample: values
        values = [x for ff, ww, vv in fields(v) if ff == 2 for x in ints(ww, vv)]
        totals = [a + b for a, b in zip(totals, values)] if totals else values
    elif f == 6:
        strings.append(v.decode())
named = {strings[t] + "/" + strings[u]: totals[k] if k < len(totals) else 0 for k, (t, u) in enumerate(types)}
coverage = next((x for x in strings if x.startswith("coverage: ")), "coverage: no comment")
print(named.get("samples/count", 0), round(named.get("cpu/nanoseconds", 0) / 1e9, 2), coverage)
PY
}
if [ "$profile_every" -gt 0 ]; then
  good_profiles=0
  for n in $(seq "$profiles"); do
    f="$workdir/profile.$n.pb.gz"
    rc=$(cat "$f.rc" 2>/dev/null || echo '?') at=$(cat "$f.at") size=$(stat -c %s "$f" 2>/dev/null || echo 0)
    magic=$(head -c2 "$f" 2>/dev/null | od -An -tx1 | tr -d ' \n')
    samples=0 cpu=0 coverage='' pprof='go not installed'
    read -r samples cpu coverage < <(profile_stats "$f" 2>/dev/null || echo 0 0 unreadable)
    ok=0
    [ "$rc" = 0 ] && [ "$size" -gt 0 ] && [ "$magic" = 1f8b ] && [ "$samples" -gt 0 ] && ok=1
    if command -v go >/dev/null; then
      if GOTOOLCHAIN=local go tool pprof -top "$f" >"$f.top" 2>&1; then
        pprof=$(grep -m1 'Total samples' "$f.top" || echo 'no Total samples line')
        grep -qE 'Total samples = [0-9.]*[1-9]' "$f.top" || ok=0
      else
        pprof="go tool pprof -top failed: $(tail -n1 "$f.top")" ok=0
      fi
    fi
    good_profiles=$((good_profiles + ok))
    report "profile $n at ${at}s: curl exit $rc, $size bytes (gzip magic ${magic:-none}), $samples samples, $cpu s CPU ($coverage); pprof -top: $pprof$( [ "$rc" = 0 ] || echo "; curl: $(head -c 200 "$f.err")")"
  done
  check "CPU profiles" "$good_profiles of $profiles good (one ${profile_s}s profile per ${profile_every}s)" \
    test "$profiles" -ge 1 -a "$good_profiles" -eq "$profiles"
fi

report "$failures failed"
[ "$failures" -eq 0 ]
