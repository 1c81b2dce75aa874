#!/usr/bin/env bash
# Checks deploy/systemd/leftpad.service as CI does: `systemd-analyze verify` clean and
# `systemd-analyze security` exposure at most 2.0. verify needs ExecStart to exist, so it
# checks a copy whose ExecStart is the binary built here (the unit is otherwise the same).
#
#   scripts/check-systemd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "check-systemd.sh: systemd-analyze is missing (apt-get install systemd)" >&2; exit 1; }
cargo build --release --quiet --bin leftpad
unit=deploy/systemd/leftpad.service
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
sed "s|^ExecStart=/usr/local/bin/leftpad|ExecStart=$PWD/target/release/leftpad|" "$unit" >"$scratch/leftpad.service"
out=$(systemd-analyze verify "$scratch/leftpad.service" 2>&1) || { echo "$out"; exit 1; }
[ -z "$out" ] || { echo "systemd-analyze verify is not clean:"; echo "$out"; exit 1; }
echo "systemd-analyze verify: clean"
# --threshold counts tenths: 20 is an exposure of 2.0.
systemd-analyze security --offline=true --threshold=20 "$unit" | tail -1
