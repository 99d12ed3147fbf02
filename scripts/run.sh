#!/usr/bin/env bash
# The recipe of `make run`: mtasink (the capture sink the shipped config
# routes the reserved .test domains to) in the background, mtad on CONFIG
# beside it. Ctrl-C (or either program stopping) stops both, and the script
# waits for both before it returns. Run from the repository root, after
# `make build` and `go build -o bin/mtasink ./cmd/mtasink`.
#
#   scripts/run.sh [CONFIG]      MTASINK_LISTEN (default 127.0.0.1:2526),
#                                MTASINK_DIR (default var/sink)
set -uo pipefail

config=${1:-configs/mtad.yaml}
sink_listen=${MTASINK_LISTEN:-127.0.0.1:2526}
sink_dir=${MTASINK_DIR:-var/sink}
mkdir -p var "$sink_dir"

./bin/mtasink --listen "$sink_listen" --dir "$sink_dir" &
sink=$!
# mtad refuses to run as root unless told to (README, Security). `make run`
# is for trying mtad out, so as root it passes --allow-root and says so.
allow_root=()
if [[ $(id -u) -eq 0 ]]; then
	echo "run.sh: running as root: passing --allow-root to mtad (run as an ordinary user to avoid this)" >&2
	allow_root=(--allow-root)
fi
./bin/mtad --config "$config" "${allow_root[@]}" &
mtad=$!

# Terminal Ctrl-C reaches both programs already (same process group);
# the trap covers a TERM sent to this script alone. `wait -n PID...`
# needs bash 5.1.
stop() {
	kill -TERM "$mtad" "$sink" 2>/dev/null
}
trap stop INT TERM

# Whichever stops first (Ctrl-C, a port in use, a bad config) stops the
# other; `wait -n` returns on a trapped signal too, so loop until both are
# gone, each waited for by its pid.
wait -n "$mtad" "$sink"
stop
rc=0
for pid in "$mtad" "$sink"; do
	# A trapped signal ends a wait early; wait again while pid lives.
	while :; do
		wait "$pid"
		s=$?
		kill -0 "$pid" 2>/dev/null || break
	done
	# 130/143: stopped by SIGINT/SIGTERM, as asked.
	if [[ $s -ne 0 && $s -ne 130 && $s -ne 143 && $rc -eq 0 ]]; then rc=$s; fi
done
exit "$rc"
