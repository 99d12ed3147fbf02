#!/usr/bin/env bash
# bench/run.sh [quick|full] — mtad against Postfix against the ceiling, side by side.
#
#   quick  W1 with 5,000 messages                         (~1-2 min)
#   full   W1  50,000 × 5 KB → 100 domains,
#          W1S W1 again with a shaping config (mtad leg only): 100 domain
#              entries whose rates and caps are far above the offered load,
#              and provider entries that match none of them, so what it
#              costs is the shaping bookkeeping alone (BENCH_W1S_N messages),
#          W1R W1 with every message DKIM-signed with an RSA-2048 key (mtad
#              leg only; BENCH_W1R_N messages, 20,000 by default),
#          W1E the same with an Ed25519 key (BENCH_W1E_N, 20,000): against
#              W1, the CPU each signature costs per message. The keys are
#              made with openssl in the run's temp dir; smtp-source's From
#              field is <bench@src.bench>, so the dkim: entry is for src.bench.
#              After the leg, every received record of mtad's log must name
#              the signature, or the leg fails,
#          W2  20,000 × 100 KB → 100 domains,
#          W3  50,000 × 5 KB → 1 domain,
#          W1H 20,000 × 5 KB → 100 domains paced at BENCH_HALF_RATE msgs/s
#              ("W1 at half rate": the p99 latency target is set at half the
#              peak rate)                                  (<~27 min)
#
# For each workload, three legs run one after the other on this machine:
#   ceiling  smtp-source straight into the counting sink
#   postfix  a private Postfix instance (own config and queue under a temp dir)
#   mtad     bin/mtad with a config written here
# Injection is always Postfix's smtp-source: 20 concurrent sessions, one
# message per connection, one recipient per message; the recipients of W1/W2
# are spread over d0.bench … d99.bench by running 20 "lanes", each a sequence
# of smtp-source -s 1 runs of up to 50 messages to one domain. Delivery goes
# to bench/cmd/benchsink, which listens on one port on every test domain's
# loopback address (dN.bench → 127.0.1.N+1, hot.bench → 127.0.2.1). mtad
# finds those through bench/cmd/benchdns (MX + A on loopback); Postfix can't
# be pointed at a DNS port, so a transport map sends each domain to its
# address ([127.0.1.N+1]:port) and Postfix does no DNS at all.
#
# Unpaced (the default) every lane runs its smtp-source runs back to back: the
# injection goes as fast as the MTA accepts. Paced (W1H, or any workload with
# BENCH_RATE set) the total offered rate is R msgs/s: each lane runs chunks of
# C = R/(2·lanes) messages, at least 1 and at most 10 (about half a second of
# the lane's share), and before each chunk sleeps until it is due: lane k's
# chunk is due at start + (S + k·C/lanes) / (R/lanes) seconds, S the messages
# the lane's earlier chunks hold. The k·C/lanes term staggers the lanes over
# one chunk period so that they don't all start their chunks at the same
# instant. A lane that falls behind its schedule runs its chunks back to back
# until it has caught up; a lane stops at the leg deadline (LEG_TIMEOUT after
# the start of injection) like the unpaced ones. A leg whose schedule alone
# (N/R seconds) does not fit in the deadline fails at once.
#
# Results: a table on stdout and in bench/out/results.md (see benchreport for
# how each figure is measured; a paced leg's offered rate is in the workload
# list and the notes); the small raw files in bench/out/last-run/.
# Exit status 1 when any leg failed (e.g. bin/mtad can't deliver yet).
#
# Only 127.0.0.0/8 is used. Every process started here is stopped on exit.
# Environment knobs:
#   BENCH_MTAS="ceiling postfix mtad"   legs to run, in this order
#   BENCH_WORKLOADS="W1 W1S W1R W1E W2 W3 W1H"  workloads of full mode to run (W1S, W1R,
#                                       W1E: mtad only, run right after W1 whatever the order)
#   BENCH_W1_N=50000                    W1's message count in full mode (a multiple of 100),
#                                       to shorten a trial run; the figures of BENCHMARKS.md
#                                       are taken with the default
#   BENCH_W1S_N=50000                   W1S's message count (a multiple of 100); the same as
#                                       W1's by default, so the two are compared like for like
#   BENCH_W1R_N=20000, BENCH_W1E_N=20000  W1R's and W1E's message counts (multiples of 100).
#                                       Fewer than W1's 50,000 to keep the two legs near a
#                                       minute: RSA-2048 signing costs ~1.2 ms of CPU a
#                                       message; the table compares per-message figures
#   BENCH_RATE=msgs/s                   pace every workload of the run (W1H excepted) at
#                                       this total injection rate (default empty: unpaced)
#   BENCH_HALF_RATE=1230                W1H's rate in msgs/s: set it to half of the W1
#                                       inj/s mtad reaches on the machine (1230 is half of
#                                       the ~2,460 msgs/s of the 2-CPU machine of BENCHMARKS.md)
#   BENCH_LEG_TIMEOUT=seconds           deadline of one leg's injection, and then of its delivery
#                                       (180 quick, 300 full)
#   BENCH_STALL=seconds                 give up when delivery makes no progress this long
#   BENCH_KEEP=1                        keep the temp dir (logs, spools) for a look
#   BENCH_MTAD=path                     the mtad binary (default bin/mtad, built by make)
#   BENCH_CONCURRENCY=20                smtp-source sessions (lanes)
#   BENCH_CONNECTIONS=100               outbound connection cap (mtad delivery.max_connections,
#                                       Postfix smtp process limit); per domain 50 for both
#   BENCH_RESERVE=N                     mtad's delivery.reserve; default the shipped proportion
#                                       (configs/mtad.yaml: 50 of 1,000), 5 of the 100 above, so
#                                       the default policy opens at most 95 (Postfix: 100)
set -uo pipefail

MODE=${1:-quick}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/bench/out
MTAS=${BENCH_MTAS:-ceiling postfix mtad}
CONC=${BENCH_CONCURRENCY:-20}
CONNS=${BENCH_CONNECTIONS:-100}
PER_DOMAIN_CONNS=50
# The shipped reserve is 50 of 1,000 connections; the benchmark caps both
# MTAs at CONNS (Postfix's smtp process limit is the same number), so mtad
# keeps the shipped proportion of it rather than the absolute 50.
RESERVE=${BENCH_RESERVE:-$((CONNS * 50 / 1000 > 0 ? CONNS * 50 / 1000 : 1))}
W1_N=${BENCH_W1_N:-50000}
W1S_N=${BENCH_W1S_N:-50000}
W1R_N=${BENCH_W1R_N:-20000}
W1E_N=${BENCH_W1E_N:-20000}
CHUNK=50
NDOMAINS=100

case $MODE in
quick) LEG_TIMEOUT=${BENCH_LEG_TIMEOUT:-180} ;;
full) LEG_TIMEOUT=${BENCH_LEG_TIMEOUT:-300} ;;
*)
	echo "usage: $0 [quick|full]" >&2
	exit 2
	;;
esac
STALL=${BENCH_STALL:-60}
MTAD=${BENCH_MTAD:-$ROOT/bin/mtad}
RATE=${BENCH_RATE:-}            # empty: unpaced
HALF_RATE=${BENCH_HALF_RATE:-1230} # W1H
PACE_MAX_CHUNK=10
[[ $RESERVE =~ ^[0-9]+$ ]] && ((RESERVE < CONNS)) || {
	echo "BENCH_RESERVE=$RESERVE: want a whole number below BENCH_CONNECTIONS ($CONNS)" >&2
	exit 2
}
for v in W1_N W1S_N W1R_N W1E_N; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] && ((${!v} % NDOMAINS == 0)) || {
		echo "BENCH_$v=${!v}: want a positive multiple of $NDOMAINS (one share per domain)" >&2
		exit 2
	}
done
for v in RATE HALF_RATE; do
	[[ -z ${!v} || ${!v} =~ ^[1-9][0-9]*$ ]] || {
		echo "BENCH_$v=${!v}: want a whole number of messages per second (> 0)" >&2
		exit 2
	}
done

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() {
	log "FATAL: $*"
	exit 1
}
now_ns() { date +%s%N; }
# commas N: N with a comma between groups of three digits (50,000).
commas() {
	local n=$1 out=
	while ((${#n} > 3)); do
		out=,${n: -3}$out
		n=${n:0:${#n}-3}
	done
	echo "$n$out"
}

WL=" ${BENCH_WORKLOADS:-W1 W1S W1R W1E W2 W3 W1H} "
if [[ $MODE == full ]]; then
	for w in $WL; do
		[[ " W1 W1S W1R W1E W2 W3 W1H " == *" $w "* ]] || die "BENCH_WORKLOADS: unknown workload $w (W1 W1S W1R W1E W2 W3 W1H)"
	done
fi

# ---------------------------------------------------------------- processes
# PIDS holds every background process started here that is still ours;
# stop_pid removes it once reaped, so a recycled pid is never signalled.
PIDS=()
JOBS_FILE=/dev/null # set to a file under WORK once it exists
PF_ETCS=() # Postfix instances started (config dirs)

forget_pid() {
	local p=$1 i
	for i in "${!PIDS[@]}"; do
		[[ ${PIDS[$i]} == "$p" ]] && unset 'PIDS[i]'
	done
}

# is_running PID: PID is one of this shell's background jobs and still
# running. Bash reaps its children by itself as they exit, so "kill -0 PID"
# on one that has ended may hit whatever process reused the PID (pid_max is
# small and a run forks tens of thousands); the job table can't be fooled.
is_running() {
	local j
	jobs -rp >"$JOBS_FILE" 2>/dev/null || return 1
	while read -r j; do
		[[ $j == "$1" ]] && return 0
	done <"$JOBS_FILE"
	return 1
}

# stop_pid PID [SIGNAL] [GRACE_S] [NAME]: signal one of our background jobs,
# wait up to GRACE_S for it to end, then SIGKILL it; reap it either way. For a
# lane (a process-group leader started with setsid) pass -PID to signal the
# whole group.
stop_pid() {
	local p=$1 sig=${2:-TERM} grace=${3:-10} name=${4:-process} target=$1 deadline start=$SECONDS
	[[ $p == -* ]] && p=${p#-}
	if is_running "$p"; then
		kill "-$sig" -- "$target" 2>/dev/null
		deadline=$((SECONDS + grace))
		while is_running "$p" && ((SECONDS < deadline)); do sleep 0.1; done
		if is_running "$p"; then
			log "$name (pid $p) did not stop $((SECONDS - start))s after SIG$sig (grace ${grace}s): SIGKILL"
			kill -KILL -- "$target" 2>/dev/null
		fi
	fi
	wait "$p" 2>/dev/null
	forget_pid "$p"
}

# is_master PID: PID is (still) a Postfix master process, not a process that
# reused the number after master exited.
is_master() {
	local comm=
	[[ -n $1 ]] && { read -r comm <"/proc/$1/comm"; } 2>/dev/null
	[[ $comm == master ]]
}

postfix_stop() {
	local etc=$1 qdir master
	qdir=$(postconf -c "$etc" -h queue_directory 2>/dev/null) || return 0
	master=$(tr -d ' \n' <"$qdir/pid/master.pid" 2>/dev/null)
	timeout 30 postfix -c "$etc" stop >/dev/null 2>&1
	# "postfix stop" only signals master; it exits once its children have.
	local deadline=$((SECONDS + 20))
	while is_master "$master" && ((SECONDS < deadline)); do sleep 0.1; done
	if is_master "$master"; then
		log "Postfix master $master still up 20 s after stop: abort"
		timeout 10 postfix -c "$etc" abort >/dev/null 2>&1
		sleep 1
		is_master "$master" && kill -KILL "$master" 2>/dev/null
	fi
	local i
	for i in "${!PF_ETCS[@]}"; do
		[[ ${PF_ETCS[$i]} == "$etc" ]] && unset 'PF_ETCS[i]'
	done
}

WORK=
cleanup() {
	local rc=$? p e
	trap - EXIT INT TERM
	for e in "${PF_ETCS[@]}"; do postfix_stop "$e"; done
	for ((p = ${#PIDS[@]} - 1; p >= 0; p--)); do
		[[ -n ${PIDS[$p]:-} ]] && stop_pid "${PIDS[$p]}" TERM 5
	done
	if [[ -n $WORK && -d $WORK ]]; then
		if [[ ${BENCH_KEEP:-0} == 1 ]]; then
			log "kept $WORK"
		else
			rm -rf "$WORK"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_line FILE PID SECONDS: wait until FILE has a first line (a helper's
# port), or PID dies, or the deadline passes. Prints the line.
wait_line() {
	local f=$1 pid=$2 deadline=$((SECONDS + $3)) line
	while ((SECONDS < deadline)); do
		if [[ -s $f ]]; then
			read -r line <"$f"
			[[ -n $line ]] && {
				echo "$line"
				return 0
			}
		fi
		is_running "$pid" || return 1
		sleep 0.05
	done
	return 1
}

# wait_port PORT PID SECONDS: wait until 127.0.0.1:PORT accepts connections.
wait_port() {
	local port=$1 pid=$2 deadline=$((SECONDS + $3))
	while ((SECONDS < deadline)); do
		if (: <>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
		if [[ $pid == master:* ]]; then
			is_master "${pid#master:}" || return 1
		else
			is_running "$pid" || return 1
		fi
		sleep 0.1
	done
	return 1
}

# sink_count FILE: set COUNT to the "count" of benchsink's stats file, 0
# before it exists. Builtins only, no fork: it runs ten times a second while
# the MTA is being measured.
sink_count() {
	local line=
	COUNT=0
	[[ -f $1 ]] && read -r line <"$1"
	[[ $line =~ \"count\":([0-9]+) ]] && COUNT=${BASH_REMATCH[1]}
}

# ---------------------------------------------------------------- setup
[[ $(id -u) == 0 ]] || die "run as root: Postfix is installed with apt and runs its master as root"

install_postfix() {
	log "installing Postfix (smtp-source, smtp-sink) with apt"
	export DEBIAN_FRONTEND=noninteractive
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections ||
		die "debconf-set-selections failed"
	# Keep the package's maintainer scripts from starting the system
	# Postfix: policy-rc.d exit 101 = "don't start services". Only add one
	# when there is none, and only remove the one we added.
	local made_policy=0
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
	fi
	apt-get update -q >/dev/null && apt-get install -y -q postfix >/dev/null
	local rc=$?
	((made_policy)) && rm -f /usr/sbin/policy-rc.d
	((rc == 0)) || die "apt-get install postfix failed"
	# Whatever the install started is ours to stop (normally nothing:
	# "No configuration" leaves no main.cf for a system instance).
	if [[ -f /etc/postfix/main.cf ]] && postfix status >/dev/null 2>&1; then
		log "stopping the system Postfix the install started"
		postfix stop >/dev/null 2>&1
	fi
}
if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null || ! command -v postfix >/dev/null; then
	install_postfix
fi
command -v smtp-source >/dev/null || die "smtp-source still missing after installing postfix"
# With "No configuration" there is no /etc/postfix/main.cf and the system
# instance can't run; if a configured one is running, leave it alone: our
# instance listens on its own port of 127.0.0.1 and nothing here uses port 25.
if [[ -f /etc/postfix/main.cf ]] && postfix status >/dev/null 2>&1; then
	log "note: the system Postfix is running; it is not used nor touched"
fi

# DKIM_LEGS: W1R or W1E will run, so keys are needed (openssl makes them).
DKIM_LEGS=0
[[ $MODE == full && " $MTAS " == *" mtad "* && ($WL == *" W1R "* || $WL == *" W1E "*) ]] && DKIM_LEGS=1
if ((DKIM_LEGS)) && ! command -v openssl >/dev/null; then
	log "installing openssl with apt (W1R/W1E make their DKIM keys with it)"
	{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >/dev/null; } ||
		die "apt-get install openssl failed"
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null

WORK=$(mktemp -d /tmp/mtad-bench.XXXXXX) || die "mktemp failed"
JOBS_FILE=$WORK/jobs
chmod 755 "$WORK" # Postfix's daemons (user postfix) must reach their queue below it
mkdir -p "$WORK/bin" "$WORK/legs" "$OUT"

log "building bench helpers"
(cd "$ROOT" && go build -o "$WORK/bin/" ./bench/cmd/...) || die "go build ./bench/cmd/... failed"
B=$WORK/bin

# DKIM keys of W1R and W1E, made for this run only: PEM PKCS#8, mode 0600
# (mtad refuses a key file readable by group or others).
DKIM_DOMAIN=src.bench # the domain of smtp-source's From: <bench@src.bench>
if ((DKIM_LEGS)); then
	mkdir -p "$WORK/dkim"
	(umask 077 &&
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/dkim/rsa.pem" 2>"$WORK/dkim/rsa.err" &&
		openssl genpkey -algorithm ed25519 -out "$WORK/dkim/ed25519.pem" 2>"$WORK/dkim/ed25519.err") ||
		die "openssl genpkey failed: $(cat "$WORK"/dkim/*.err)"
	chmod 600 "$WORK/dkim/rsa.pem" "$WORK/dkim/ed25519.pem"
	log "DKIM keys for $DKIM_DOMAIN: RSA-2048 and Ed25519 ($(openssl version | cut -d' ' -f1-2))"
fi

"$B/benchdns" -domains "$NDOMAINS" >"$WORK/dns.port" 2>"$WORK/dns.err" &
DNS_PID=$!
PIDS+=("$DNS_PID")
DNS_PORT=$(wait_line "$WORK/dns.port" "$DNS_PID" 10) || die "benchdns did not start: $(cat "$WORK/dns.err")"
log "DNS on 127.0.0.1:$DNS_PORT (udp+tcp)"

# ---------------------------------------------------------------- injection
# pace_chunk RATE: the chunk size of a lane paced at RATE msgs/s in all, about
# half a second of the lane's share, 1 to PACE_MAX_CHUNK messages.
pace_chunk() {
	local c=$(($1 / (2 * CONC)))
	((c < 1)) && c=1
	((c > PACE_MAX_CHUNK)) && c=$PACE_MAX_CHUNK
	echo "$c"
}

# plan_lanes DIR N CHUNK DOMAIN...: spread N messages evenly over the domains
# in chunks of ≤ CHUNK, dealt round-robin to CONC lane files DIR/lane.K, each
# line "domain count tag".
plan_lanes() {
	local dir=$1 n=$2 chunk=$3
	shift 3
	local ndom=$# per r d cnt k=0 lane
	((n % ndom == 0)) || die "message count $n is not a multiple of $ndom domains"
	per=$((n / ndom))
	for ((lane = 0; lane < CONC; lane++)); do : >"$dir/lane.$lane"; done
	for ((r = 0; r * chunk < per; r++)); do
		for d in "$@"; do
			cnt=$((per - r * chunk))
			((cnt > chunk)) && cnt=$chunk
			echo "$d $cnt c$k" >>"$dir/lane.$((k % CONC))"
			k=$((k + 1))
		done
	done
}

# The lane: a bash loop in its own process group (setsid), so a timeout can
# stop it together with the smtp-source it is running. Arguments: lane file,
# port, message size, failure file, then for pacing: RATE (0: unpaced), lane
# number, lanes, chunk size, start and deadline in ns since the epoch.
# Paced, it sleeps before each chunk until start + (sent·lanes + k·chunk)/RATE,
# i.e. (sent + k·chunk/lanes) / (RATE/lanes) s: one clock read and at most
# one sleep per chunk ($EPOCHREALTIME is a bash 5 builtin; date on bash 4).
# It stops at the deadline instead of starting or waiting for a chunk past it.
LANE_SCRIPT='
	f=$1 port=$2 size=$3 failed=$4 rate=$5 k=$6 lanes=$7 chunk=$8 start=$9 deadline=${10}
	sent=0
	while read -r dom cnt tag; do
		if ((rate > 0)); then
			due=$((start + (sent * lanes + k * chunk) * 1000000000 / rate))
			if [[ -n ${EPOCHREALTIME:-} ]]; then
				now=${EPOCHREALTIME//[!0-9]/}000
			else
				now=$(date +%s%N)
			fi
			if ((due >= deadline || now >= deadline)); then
				echo "lane $k: leg deadline reached after $sent messages of the paced schedule" >>"$failed"
				break
			fi
			if ((due > now)); then
				printf -v s "%d.%09d" $(((due - now) / 1000000000)) $(((due - now) % 1000000000))
				sleep "$s"
			fi
			sent=$((sent + cnt))
		fi
		smtp-source -s 1 -m "$cnt" -N -l "$size" -f bench@src.bench -M inj.bench \
			-t "$tag@$dom" "127.0.0.1:$port" >/dev/null 2>>"$f.err" ||
			echo "$dom $cnt $tag" >>"$failed"
	done <"$f"
	date +%s%N >"$f.end"'

# inject DIR PORT SIZE [RATE CHUNK]: run the lanes planned in DIR against
# 127.0.0.1:PORT, paced at RATE msgs/s in all when RATE is given (CHUNK: the
# plan's chunk size, for the lanes' stagger). Sets INJ_START_NS, INJ_END_NS,
# INJ_FAILED (failed smtp-source runs, plus one per lane stopped by the
# deadline).
inject() {
	local dir=$1 port=$2 size=$3 rate=${4:-0} chunk=${5:-0} lane pids=() deadline p
	: >"$dir/inject.failed"
	INJ_START_NS=$(now_ns)
	for ((lane = 0; lane < CONC; lane++)); do
		setsid bash -c "$LANE_SCRIPT" lane "$dir/lane.$lane" "$port" "$size" "$dir/inject.failed" \
			"${rate:-0}" "$lane" "$CONC" "$chunk" "$INJ_START_NS" "$((INJ_START_NS + LEG_TIMEOUT * 1000000000))" &
		pids+=($!)
		PIDS+=($!)
	done
	# Each lane writes its .end file as its last act: poll for those (no
	# process is forked to look), then reap the lanes.
	deadline=$((SECONDS + LEG_TIMEOUT))
	local ends=()
	while ((SECONDS < deadline)); do
		ends=("$dir"/lane.*.end)
		[[ -e ${ends[0]} ]] && ((${#ends[@]} >= CONC)) && break
		sleep 0.05
	done
	ends=("$dir"/lane.*.end)
	if ! [[ -e ${ends[0]} ]] || ((${#ends[@]} < CONC)); then
		log "injection lanes still running at the ${LEG_TIMEOUT}s deadline: stopping them"
		echo "lane timeout" >>"$dir/inject.failed"
	fi
	for p in "${pids[@]}"; do stop_pid "-$p" TERM 5 "injection lane"; done
	INJ_END_NS=$(cat "$dir"/lane.*.end 2>/dev/null | sort -n | tail -1)
	INJ_END_NS=${INJ_END_NS:-$(now_ns)}
	INJ_FAILED=$(wc -l <"$dir/inject.failed")
	if ((INJ_FAILED > 0)); then
		INJ_ERR=$(cat "$dir"/lane.*.err "$dir/inject.failed" 2>/dev/null | head -1)
	else
		INJ_ERR=
	fi
}

# wait_delivered STATS N PID: poll the sink's stats until N messages have
# arrived; give up after STALL seconds without progress or at the leg's
# deadline, or when PID (the MTA) dies. Sets DELIVERED.
wait_delivered() {
	local stats=$1 n=$2 pid=${3:-} deadline=$((SECONDS + LEG_TIMEOUT)) last=-1 since=$SECONDS c
	WAIT_WHY=
	while :; do
		sink_count "$stats"
		c=$COUNT
		DELIVERED=$c
		((c >= n)) && return 0
		if ((c != last)); then
			last=$c
			since=$SECONDS
		fi
		if ((SECONDS - since >= STALL)); then
			WAIT_WHY="no delivery progress for ${STALL}s ($c/$n delivered)"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			WAIT_WHY="leg deadline of ${LEG_TIMEOUT}s passed ($c/$n delivered)"
			return 1
		fi
		if [[ -n $pid ]] && ! { [[ $MTA_KIND == postfix ]] && is_master "$pid" || is_running "$pid"; }; then
			WAIT_WHY="the MTA (pid $pid) exited ($c/$n delivered)"
			return 1
		fi
		sleep 0.1
	done
}

# ---------------------------------------------------------------- MTAs
# start_postfix DIR SINK_TRANSPORT: a private instance in DIR. Sets
# MTA_PORT, MTA_PID (master), MTA_LOGS, MTA_ETC.
start_postfix() {
	local d=$1 transport=$2 port
	mkdir -p "$d/etc" "$d/queue" "$d/data" "$d/log"
	chown postfix "$d/data"
	cp "$transport" "$d/etc/transport"
	port=$("$B/benchport") || return 1
	cat >"$d/etc/main.cf" <<EOF
# Private benchmark instance; see bench/run.sh.
compatibility_level = 3.6
queue_directory = $d/queue
data_directory = $d/data
command_directory = $(postconf -d -h command_directory 2>/dev/null || echo /usr/sbin)
daemon_directory = $(postconf -d -h daemon_directory 2>/dev/null || echo /usr/lib/postfix/sbin)
meta_directory = $(postconf -d -h meta_directory 2>/dev/null || echo /etc/postfix)
shlib_directory = $(postconf -d -h shlib_directory 2>/dev/null || echo /usr/lib/postfix)
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
# No DNS: every test domain goes to its own sink address.
transport_maps = texthash:$d/etc/transport
smtp_host_lookup = native
default_destination_concurrency_limit = $PER_DOMAIN_CONNS
smtp_destination_concurrency_limit = $PER_DOMAIN_CONNS
default_process_limit = $((CONNS + 100))
maillog_file = $d/log/maillog
maillog_file_prefixes = $d/log
delay_logging_resolution_limit = 3
smtputf8_enable = no
biff = no
queue_minfree = 0
EOF
	cat >"$d/etc/master.cf" <<EOF
# service type private unpriv chroot wakeup maxproc command
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n - n 60    1  pickup
cleanup   unix  n - n -     0  cleanup
qmgr      unix  n - n 300   1  qmgr
rewrite   unix  - - n -     -  trivial-rewrite
bounce    unix  - - n -     0  bounce
defer     unix  - - n -     0  bounce
trace     unix  - - n -     0  bounce
verify    unix  - - n -     1  verify
flush     unix  n - n 1000? 0  flush
proxymap  unix  - - n -     -  proxymap
proxywrite unix - - n -     1  proxymap
smtp      unix  - - n -     $CONNS smtp
relay     unix  - - n -     -  smtp
showq     unix  n - n -     -  showq
error     unix  - - n -     -  error
retry     unix  - - n -     -  error
discard   unix  - - n -     -  discard
local     unix  - n n -     -  local
anvil     unix  - - n -     1  anvil
scache    unix  - - n -     1  scache
postlog   unix-dgram n - n - 1 postlogd
EOF
	if ! postfix -c "$d/etc" check >"$d/check.out" 2>&1; then
		MTA_ERR="postfix check failed: $(head -3 "$d/check.out") $(tail -3 "$d/log/maillog" 2>/dev/null)"
		return 1
	fi
	PF_ETCS+=("$d/etc")
	if ! postfix -c "$d/etc" start >"$d/start.out" 2>&1; then
		MTA_ERR="postfix start failed: $(tail -3 "$d/log/maillog" 2>/dev/null)"
		return 1
	fi
	local deadline=$((SECONDS + 15))
	MTA_PID=
	while ((SECONDS < deadline)); do
		MTA_PID=$(tr -d ' \n' <"$d/queue/pid/master.pid" 2>/dev/null)
		[[ -n $MTA_PID ]] && break
		sleep 0.1
	done
	[[ -n $MTA_PID ]] || {
		MTA_ERR="postfix master wrote no pid file"
		return 1
	}
	wait_port "$port" "master:$MTA_PID" 15 || {
		MTA_ERR="postfix smtpd not listening on 127.0.0.1:$port: $(tail -3 "$d/log/maillog")"
		return 1
	}
	MTA_PORT=$port
	MTA_ETC=$d/etc
	MTA_LOGS=$d/log/maillog
}

# shaping_w1s: the shaping: section of W1S. Four provider entries as shipped
# (configs/mtad.yaml) that match none of the benchmark's MX hosts
# (mx.dN.bench), the "*" entry of every leg, and one entry per test domain
# whose rate and cap are far above what W1 offers (about 25 msgs/s and a
# few connections per domain), so nothing is ever throttled: every delivery
# still takes a token from its site's bucket, which is the cost measured.
shaping_w1s() {
	local i
	cat <<EOF
shaping:
  providers:
    - name: google
      match_mx: [".google.com", ".googlemail.com"]
      max_connections: 10
      max_message_rate: "10/s"
      provider_max_message_rate: "3000/m"
    - name: microsoft
      match_mx: [".outlook.com", ".protection.outlook.com"]
      match_domain: ["hotmail.com", "outlook.com", "live.com"]
      max_connections: 5
      max_message_rate: "5/s"
    - name: yahoo
      match_mx: [".yahoodns.net"]
      max_connections: 10
      max_message_rate: "5/s"
    - name: apple
      match_mx: [".icloud.com", ".mail.icloud.com"]
      max_connections: 5
      max_message_rate: "5/s"
  domains:
    - match: "*"
      max_connections: $PER_DOMAIN_CONNS
EOF
	for ((i = 0; i < NDOMAINS; i++)); do
		printf '    - match: "d%d.bench"\n      max_connections: %d\n      max_message_rate: "100000/s"\n' "$i" "$PER_DOMAIN_CONNS"
	done
}

# start_mtad DIR SINK_PORT [SHAPING] [DKIM]: bin/mtad with its own spool in
# DIR; SHAPING "w1s" writes W1S's shaping section instead of the plain one;
# DKIM "rsa" or "ed25519" adds a dkim: entry signing $DKIM_DOMAIN's mail
# with that key. Sets MTA_PORT, MTA_PID, MTA_LOGS.
start_mtad() {
	local d=$1 sink=$2 shaping=${3:-} dkim=${4:-} ports inj adm
	if [[ ! -x $MTAD ]]; then
		MTA_ERR="$MTAD not built (make build)"
		return 1
	fi
	mkdir -p "$d"
	ports=($("$B/benchport" -n 2)) || return 1
	inj=${ports[0]}
	adm=${ports[1]}
	# Keys: internal/config (configs/mtad.yaml documents each one).
	cat >"$d/mtad.yaml" <<EOF
hostname: mtad.bench.test
spool:
  dir: $d/spool
log:
  level: info
  format: json
  file: $d/mtad.log
inject:
  smtp:
    listen: ["127.0.0.1:$inj"]
    relay_networks: ["127.0.0.0/8"]
admin:
  listen: 127.0.0.1:$adm
dns:
  servers: ["127.0.0.1:$DNS_PORT"]
delivery:
  port: $sink
  allow_loopback_mx: true
  max_connections: $CONNS
  reserve: $RESERVE
EOF
	if [[ $shaping == w1s ]]; then
		shaping_w1s >>"$d/mtad.yaml"
	else
		cat >>"$d/mtad.yaml" <<EOF
shaping:
  domains:
    - match: "*"
      max_connections: $PER_DOMAIN_CONNS
EOF
	fi
	if [[ -n $dkim ]]; then
		cat >>"$d/mtad.yaml" <<EOF
dkim:
  - domain: $DKIM_DOMAIN
    selector: bench-$dkim
    key_file: $WORK/dkim/$dkim.pem
EOF
	fi
	# mtad refuses root without --allow-root; benches run as root in CI.
	local allow_root=()
	[[ $(id -u) -eq 0 ]] && allow_root=(--allow-root)
	"$MTAD" --config "$d/mtad.yaml" "${allow_root[@]}" >"$d/stdout.log" 2>"$d/stderr.log" &
	MTA_PID=$!
	PIDS+=("$MTA_PID")
	MTA_LOGS="$d/mtad.log,$d/stdout.log,$d/stderr.log"
	if ! wait_port "$inj" "$MTA_PID" 20; then
		if is_running "$MTA_PID"; then
			MTA_ERR="mtad did not listen on 127.0.0.1:$inj within 20 s"
		else
			MTA_ERR="mtad exited at start: $(tail -c 600 "$d/stderr.log" | tr '\n' ' ') $(tail -c 400 "$d/mtad.log" 2>/dev/null | tr '\n' ' ')"
		fi
		return 1
	fi
	MTA_PORT=$inj
}

# ---------------------------------------------------------------- one leg
LEG_NO=0
FAILED_LEGS=0

# run_leg WORKLOAD DESC MTA N SIZE RATE DOMAIN...: RATE empty for unpaced
# injection, else the total msgs/s the lanes offer.
# settle: let the previous leg's aftermath pass before the next starts — its
# dirty pages written back (sync) and the CPUs idle (≥ 90% over one second,
# checked for at most 20 s) — so a leg does not pay for the one before it
# (Postfix leaves tens of thousands of queue-file writes behind).
settle() {
	sync
	local i a b c d e f g h t0 i0 t1 i1
	for ((i = 0; i < 20; i++)); do
		read -r _ a b c d e f g h _ </proc/stat
		t0=$((a + b + c + d + e + f + g + h)) i0=$((d + e))
		sleep 1
		read -r _ a b c d e f g h _ </proc/stat
		t1=$((a + b + c + d + e + f + g + h)) i1=$((d + e))
		(((i1 - i0) * 10 >= (t1 - t0) * 9)) && return 0
	done
	log "   the machine did not go idle within 20 s; starting anyway"
}

run_leg() {
	local w=$1 desc=$2 mta=$3 n=$4 size=$5 rate=$6 chunk=$CHUNK
	shift 6
	settle
	LEG_NO=$((LEG_NO + 1))
	local id
	id=$(printf '%02d-%s-%s' "$LEG_NO" "$w" "$mta")
	local d=$WORK/legs/$id leg=$WORK/legs/$id.leg
	mkdir -p "$d"
	log "── $w $mta: $desc"
	{
		echo "workload=$w"
		echo "desc=$desc"
		echo "mta=$mta"
		echo "n=$n"
	} >"$leg"
	if [[ -n $rate ]]; then
		chunk=$(pace_chunk "$rate")
		echo "rate=$rate" >>"$leg"
		echo "pace_chunk=$chunk" >>"$leg"
		log "   paced: $rate msgs/s offered, chunks of $chunk per lane, ~$((n / rate)) s of injection"
	fi

	local sink_pid mon_pid= status=ok reason= sinkport
	MTA_PID= MTA_PORT= MTA_LOGS= MTA_ERR= MTA_ETC= MTA_KIND=$mta
	"$B/benchsink" -domains "$NDOMAINS" -stats "$d/sink.json" -records "$d/sink.records" \
		-postfix-transport "$d/transport" >"$d/sink.port" 2>"$d/sink.err" &
	sink_pid=$!
	PIDS+=("$sink_pid")
	if ! sinkport=$(wait_line "$d/sink.port" "$sink_pid" 10); then
		status=failed reason="benchsink did not start: $(cat "$d/sink.err")"
	fi
	echo "sink_stats=$d/sink.json" >>"$leg"

	if [[ -n $rate ]] && ((n > rate * LEG_TIMEOUT)); then
		status=failed reason="$n messages paced at $rate msgs/s take $((n / rate)) s, more than the ${LEG_TIMEOUT}s leg deadline (BENCH_LEG_TIMEOUT)"
	fi
	if [[ $status == ok ]]; then
		case $mta in
		ceiling) MTA_PORT=$sinkport ;;
		postfix) start_postfix "$d/postfix" "$d/transport" || status=failed reason=$MTA_ERR ;;
		mtad) start_mtad "$d/mtad" "$sinkport" "$LEG_SHAPING" "$LEG_DKIM" || status=failed reason=$MTA_ERR ;;
		esac
	fi

	if [[ $status == ok && -n $MTA_PID ]]; then
		"$B/benchmon" -pid "$MTA_PID" -out "$d/mon.json" 2>"$d/mon.err" &
		mon_pid=$!
		PIDS+=("$mon_pid")
		echo "mon=$d/mon.json" >>"$leg"
		echo "log_kind=$mta" >>"$leg"
		echo "log=$MTA_LOGS" >>"$leg"
	fi

	if [[ $status == ok ]]; then
		plan_lanes "$d" "$n" "$chunk" "$@"
		inject "$d" "$MTA_PORT" "$size" "$rate" "$chunk"
		log "   injected $n in $(((INJ_END_NS - INJ_START_NS) / 1000000)) ms ($INJ_FAILED failed smtp-source runs)"
		{
			echo "inj_start_ns=$INJ_START_NS"
			echo "inj_end_ns=$INJ_END_NS"
			echo "inj_failed_chunks=$INJ_FAILED"
		} >>"$leg"
		if ! wait_delivered "$d/sink.json" "$n" "$MTA_PID"; then
			status=failed reason=$WAIT_WHY
		fi
		if ((INJ_FAILED > 0)); then
			status=failed reason="${reason:+$reason; }$INJ_FAILED smtp-source runs failed: ${INJ_ERR}"
		fi
		log "   delivered $DELIVERED/$n"
	fi

	# Stop the measurement first, then the MTA, then the sink (whose last
	# stats are the final count).
	[[ -n $mon_pid ]] && stop_pid "$mon_pid" TERM 10 benchmon
	case $mta in
	postfix) [[ -n $MTA_ETC ]] && postfix_stop "$MTA_ETC" ;;
	mtad) [[ -n $MTA_PID ]] && stop_pid "$MTA_PID" TERM 40 mtad ;;
	esac
	stop_pid "$sink_pid" TERM 10 benchsink

	if [[ $status == ok && $mta == mtad && -n $LEG_DKIM ]]; then
		check_signed "$d/mtad/mtad.log" "$n" "$LEG_DKIM" "$leg" || status=failed reason=$SIGNED_WHY
	fi
	if [[ $status != ok && $mta == mtad && -d $d/mtad ]]; then
		log "   mtad's last words:"
		tail -n 5 "$d/mtad/stderr.log" "$d/mtad/mtad.log" 2>/dev/null | sed 's/^/     /' >&2
	fi
	if [[ $status != ok ]]; then
		FAILED_LEGS=$((FAILED_LEGS + 1))
		log "   FAILED: $reason"
	fi
	{
		echo "status=$status"
		echo "reason=$(echo "$reason" | tr '\n' ' ')"
	} >>"$leg"
}

# check_signed LOG N KEY LEGFILE: after a signing leg, count the received
# records of mtad's LOG that name the signature by KEY ("rsa" or "ed25519");
# fewer than N (a message went unsigned, or the key was not used) fails the
# leg, so a W1R or W1E figure is never that of unsigned mail. Appends
# dkim_algo= and dkim_signed= to LEGFILE; sets SIGNED_WHY.
check_signed() {
	local log=$1 n=$2 key=$3 legf=$4 algo signed unsigned
	algo=rsa-sha256
	[[ $key == ed25519 ]] && algo=ed25519-sha256
	signed=$(grep -c -F "\"dkim\":[\"d=$DKIM_DOMAIN s=bench-$key a=$algo\"]" "$log" 2>/dev/null)
	signed=${signed:-0}
	{
		echo "dkim_algo=$algo"
		echo "dkim_signed=$signed"
	} >>"$legf"
	((signed >= n)) && return 0
	unsigned=$(grep -o -m1 '"dkim":"unsigned: [^"]*"' "$log" 2>/dev/null)
	SIGNED_WHY="$signed of $n received records name the $algo signature${unsigned:+ (first unsigned: $unsigned)}"
	return 1
}

# LEG_SHAPING and LEG_DKIM are start_mtad's SHAPING and DKIM for the legs
# being run ("" but for W1S, and for W1R and W1E).
LEG_SHAPING=
LEG_DKIM=

# run_workload NAME DESC N SIZE RATE DOMAIN...: RATE empty for unpaced.
run_workload() {
	local mta
	for mta in $MTAS; do
		run_leg "$1" "$2" "$mta" "$3" "$4" "$5" "${@:6}"
	done
}

# run_variant NAME DESC N SHAPING DKIM: W1 on mtad with start_mtad's SHAPING
# and DKIM, right after W1 so that the mtad legs are as close in time as the
# run allows. Only mtad runs them: the ceiling and Postfix legs of W1 are the
# same with or without shaping, and Postfix does not sign.
run_variant() {
	[[ " $MTAS " == *" mtad "* ]] || {
		log "$1 skipped: it runs mtad only, and BENCH_MTAS has no mtad"
		return
	}
	LEG_SHAPING=$4 LEG_DKIM=$5
	run_leg "$1" "$(commas "$3") × 5 KB → 100 domains, $2" mtad "$3" 5120 "$RATE" "${DOMS[@]}"
	LEG_SHAPING= LEG_DKIM=
}

# ---------------------------------------------------------------- run
DOMS=()
for ((i = 0; i < NDOMAINS; i++)); do DOMS+=("d$i.bench"); done

{
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), mode: $MODE, legs: $MTAS"
	echo "- machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
	echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- mtad: $(cd "$ROOT" && git describe --tags --always --dirty 2>/dev/null || echo unknown); Postfix $(dpkg-query -W -f '${Version}' postfix 2>/dev/null || echo unknown); $(go version | cut -d' ' -f3)"
	pacing="unpaced (as fast as the MTA accepts)"
	[[ -n $RATE ]] && pacing="paced at $RATE msgs/s in all (BENCH_RATE)"
	[[ $MODE == full && $WL == *" W1H "* ]] && pacing="W1H paced at $HALF_RATE msgs/s in all (BENCH_HALF_RATE), other workloads $pacing"
	echo "- injection: smtp-source, $CONC sessions, one message per connection, 1 recipient each; $pacing"
	echo "- outbound caps: $CONNS connections in all, $PER_DOMAIN_CONNS per domain (mtad delivery.max_connections / shaping.domains[*].max_connections; Postfix smtp maxproc / destination concurrency); mtad's delivery.reserve $RESERVE (the shipped 50 of 1,000, in proportion), so its default policy opens at most $((CONNS - RESERVE))"
	((DKIM_LEGS)) && echo "- DKIM (W1R, W1E): one dkim: entry for $DKIM_DOMAIN (the From domain of every injected message), RSA-2048 or Ed25519 key made at the start of the run by $(openssl version | cut -d' ' -f1-2), mtad's default h= list and relaxed/relaxed; a leg fails unless each message's received record names its signature"
} >"$WORK/meta.md"

case $MODE in
quick)
	run_workload W1 "5,000 × 5 KB → 100 domains" 5000 5120 "$RATE" "${DOMS[@]}"
	;;
full)
	[[ $WL == *" W1 "* ]] && run_workload W1 "$(commas "$W1_N") × 5 KB → 100 domains" "$W1_N" 5120 "$RATE" "${DOMS[@]}"
	[[ $WL == *" W1S "* ]] && run_variant W1S "W1 with 100 shaped domains (rates far above the load)" "$W1S_N" w1s ""
	[[ $WL == *" W1R "* ]] && run_variant W1R "W1 DKIM-signed with RSA-2048 (d=$DKIM_DOMAIN)" "$W1R_N" "" rsa
	[[ $WL == *" W1E "* ]] && run_variant W1E "W1 DKIM-signed with Ed25519 (d=$DKIM_DOMAIN)" "$W1E_N" "" ed25519
	[[ $WL == *" W2 "* ]] && run_workload W2 "20,000 × 100 KB → 100 domains" 20000 102400 "$RATE" "${DOMS[@]}"
	[[ $WL == *" W3 "* ]] && run_workload W3 "50,000 × 5 KB → 1 domain (hot.bench)" 50000 5120 "$RATE" hot.bench
	[[ $WL == *" W1H "* ]] && run_workload W1H "20,000 × 5 KB → 100 domains, W1 at half rate" 20000 5120 "$HALF_RATE" "${DOMS[@]}"
	;;
esac

echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/meta.md"
echo >&2
"$B/benchreport" -legs "$WORK/legs" -meta "$WORK/meta.md" -md "$OUT/results.md" || die "benchreport failed"
rm -rf "$OUT/last-run"
mkdir -p "$OUT/last-run"
cp "$WORK/meta.md" "$WORK"/legs/*.leg "$OUT/last-run/" 2>/dev/null
for f in "$WORK"/legs/*/; do
	n=$(basename "$f")
	for j in sink.json mon.json; do [[ -f $f/$j ]] && cp "$f/$j" "$OUT/last-run/$n.$j"; done
done
log "results written to bench/out/results.md"
if ((FAILED_LEGS > 0)); then
	log "$FAILED_LEGS leg(s) failed"
	exit 1
fi
