# Shared by the load scripts: start one server pinned to a CPU on loopback, wait until it
# answers, stop it by PID. Source it; it defines start_server and stop_server, and
# start_statsd_sink and stop_statsd_sink for a StatsD stand-in.
#
#   start_server NAME ADDR WORKDIR [EXTRA ARGS...]
#     NAME: leftpad, leftpad-musl, floor, nginx, go-v2, or the path of a leftpad binary
#   stop_server
# After start_server, $server_pid is the server's PID (for /proc/PID/stat).

server_cpu=${SERVER_CPU:-0}
load_cpu=${LOAD_CPU:-1}
bench_path=${BENCH_PATH:-'/v1/leftpad/?str=test&len=50&chr=*'}

start_server() {
  local name=$1 addr=$2 workdir=$3
  shift 3
  case $name in
    leftpad)
      [ -x target/release/leftpad ] || cargo build --release --quiet --bin leftpad
      taskset -c "$server_cpu" target/release/leftpad --listen "$addr" --workers 1 "$@" \
        >/dev/null 2>"$workdir/server.log" &
      ;;
    leftpad-musl)
      # The static build of scripts/image.sh, to compare with the glibc one.
      local musl=target/x86_64-unknown-linux-musl/release/leftpad
      [ -x "$musl" ] || cargo build --release --quiet --target x86_64-unknown-linux-musl --bin leftpad
      taskset -c "$server_cpu" "$musl" --listen "$addr" --workers 1 "$@" \
        >/dev/null 2>"$workdir/server.log" &
      ;;
    floor)
      [ -x target/release/examples/floor ] || cargo build --release --quiet --example floor
      taskset -c "$server_cpu" target/release/examples/floor --listen "$addr" --workers 1 "$@" \
        2>"$workdir/server.log" &
      ;;
    nginx)
      command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx-light)" >&2; return 1; }
      scripts/nginx-floor.sh "${addr##*:}" "$workdir" >"$workdir/nginx.conf"
      taskset -c "$server_cpu" nginx -c "$workdir/nginx.conf" -p "$workdir" 2>"$workdir/server.log" &
      ;;
    go-v2)
      # The article's Go service (bench/go-v2), one OS thread running Go code like one worker.
      command -v go >/dev/null || { echo "go is not installed (apt-get install golang-go)" >&2; return 1; }
      (cd bench/go-v2 && go build -o ../../target/go-v2 .)
      GOMAXPROCS=1 taskset -c "$server_cpu" target/go-v2 -listen "$addr" "$@" 2>"$workdir/server.log" &
      ;;
    */*)
      # A leftpad binary by path (another commit's build, for side-by-side runs).
      [ -x "$name" ] || { echo "no executable at $name" >&2; return 1; }
      taskset -c "$server_cpu" "$name" --listen "$addr" --workers 1 "$@" \
        >/dev/null 2>"$workdir/server.log" &
      ;;
    *) echo "unknown server '$name' (leftpad, leftpad-musl, floor, nginx, go-v2 or a path to a leftpad binary)" >&2; return 2 ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do
    curl -fs -o /dev/null "http://$addr$bench_path" && return 0
    sleep 0.05
  done
  echo "$name did not start:" >&2
  cat "$workdir/server.log" >&2
  return 1
}

stop_server() {
  if [ -n "${server_pid:-}" ]; then
    kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    server_pid=''
  fi
}

# A port nothing listens on, below the kernel's ephemeral range (32768 and up), so the
# load generator's own connections cannot have taken it meanwhile.
free_port() {
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 12000))
    python3 -c 'import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null && { echo "$port"; return 0; }
  done
  echo "free_port: no free port found in 20000-31999" >&2
  return 1
}

# The commit the figures come from; "-dirty" when code differs from it (results written
# under bench-results/ do not count).
commit_id() {
  local id
  id=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git status --porcelain -- . ':!bench-results' 2>/dev/null)" ] && id="$id-dirty"
  echo "$id"
}

# A StatsD stand-in that listens (so sends are not refused) and never reads: sets
# $sink_port and $sink_pid; stop_statsd_sink ends it.
start_statsd_sink() {
  sink_port=$(free_port)
  python3 -c "import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', int(sys.argv[1])))
time.sleep(86400)" "$sink_port" &
  sink_pid=$!
}

stop_statsd_sink() {
  if [ -n "${sink_pid:-}" ]; then
    kill "$sink_pid" 2>/dev/null || true
    sink_pid=''
  fi
}
