#!/usr/bin/env bash
# Builds the container image: a static x86_64-unknown-linux-musl binary (mimalloc and
# io_uring included; DWARF stripped, symbols kept for profiles) in an image FROM scratch,
# running as user 65532, at most 10 MB, with buildah. --smoke then runs the image's
# entrypoint from the image's own root filesystem (mounted with buildah; `podman run`
# cannot set rlimits on this machine) as the image's user, with chroot, and checks
# /healthz and a leftpad request.
#
#   scripts/image.sh [-t TAG] [--smoke]
set -euo pipefail
cd "$(dirname "$0")/.."

tag="leftpad:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
smoke=no
while [ $# -gt 0 ]; do
  case $1 in
    -t) tag=$2; shift 2 ;;
    --smoke) smoke=yes; shift ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
done
for tool in buildah podman strip curl; do
  command -v "$tool" >/dev/null || { echo "image.sh: $tool is missing (apt-get install buildah podman binutils curl)" >&2; exit 1; }
done
command -v musl-gcc >/dev/null || { echo "image.sh: musl-gcc is missing (apt-get install musl-tools)" >&2; exit 1; }
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl

cargo build --release --quiet --target x86_64-unknown-linux-musl --bin leftpad
context=$(mktemp -d)
container=''
root=''
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  [ -n "$container" ] && { buildah umount "$container" >/dev/null 2>&1 || true; buildah rm "$container" >/dev/null 2>&1 || true; }
  rm -rf "$context"
}
trap cleanup EXIT
strip --strip-debug -o "$context/leftpad" target/x86_64-unknown-linux-musl/release/leftpad
cp Containerfile "$context/Containerfile"
buildah build --quiet --layers=false -f "$context/Containerfile" -t "$tag" "$context" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image $tag: $size bytes"
[ "$size" -le $((10 * 1024 * 1024)) ] || { echo "image.sh: the image is over 10 MB" >&2; exit 1; }

[ "$smoke" = yes ] || exit 0
container=$(buildah from "$tag")
root=$(buildah mount "$container")
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$container")
entrypoint=$(buildah inspect --format '{{index .OCIv1.Config.Entrypoint 0}}' "$container")
[ "$user" = "65532:65532" ] || { echo "image.sh: the image runs as '$user', not 65532:65532" >&2; exit 1; }
port=$((20000 + RANDOM % 20000))
chroot --userspec="$user" "$root" "$entrypoint" --listen "127.0.0.1:$port" --admin off --statsd off \
  --access-log - >"$context/stdout" 2>"$context/stderr" &
server_pid=$!
for _ in $(seq 100); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break
  sleep 0.05
done
health=$(curl -fsS "http://127.0.0.1:$port/healthz")
padded=$(curl -fsS "http://127.0.0.1:$port/v1/leftpad/?str=test&len=8&chr=*")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$server_pid/status")
head -1 "$context/stderr"
echo "healthz: $health; leftpad: $padded; running as uid $uid"
[ "$health" = ok ] && [ "$padded" = '{"str":"****test"}' ] && [ "$uid" = 65532 ] ||
  { echo "image.sh: the image's entrypoint did not serve as expected" >&2; cat "$context/stderr" >&2; exit 1; }
echo "smoke: ok"
