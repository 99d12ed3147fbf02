#!/usr/bin/env bash
# test/e2e/deps.sh — installs what `make test` needs beyond Go, and only
# what is missing: python3 (the smtplib interop test), Postfix (the
# interop test runs a private Postfix instance whose smtp client relays into
# mtad), Chromium (internal/admin drives the status page in it, headless)
# and redis-server (internal/cluster shares limits between nodes through it).
# When all are present it does nothing and prints nothing.
#
# Installing needs root and apt (CI runs as root on a clean Debian). Not root
# and something missing: it says what and fails, rather than letting the
# tests skip what issue 8 requires them to show.
#
# Postfix is installed with debconf's "No configuration": no
# /etc/postfix/main.cf, so the system instance cannot start and nothing
# listens on port 25; the test configures its own instance in a temporary
# directory and never reads /etc/postfix. redis-server (internal/cluster's
# tests start their own on a free loopback port) is covered by the same
# policy-rc.d, so the system instance is not started either. A policy-rc.d that forbids starting
# services covers the install itself (added only if there is none, and
# removed again).
set -euo pipefail

need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
if ! command -v postfix >/dev/null 2>&1 && [[ ! -x /usr/sbin/postfix ]]; then
	need+=(postfix)
fi
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
	need+=(chromium)
fi
((${#need[@]} == 0)) && exit 0

say() { echo "deps: $*" >&2; }
if [[ $(id -u) != 0 ]]; then
	say "missing: ${need[*]}. The tests need them (Postfix relays into mtad; python3 runs smtplib; chromium shows the status page)."
	say "Run 'make deps' as root to install them with apt, or install them yourself."
	exit 1
fi
command -v apt-get >/dev/null 2>&1 || {
	say "missing: ${need[*]}, and there is no apt-get to install them with"
	exit 1
}

say "installing ${need[*]} with apt"
export DEBIAN_FRONTEND=noninteractive
if [[ " ${need[*]} " == *" postfix "* ]]; then
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi
made_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod 755 /usr/sbin/policy-rc.d
	made_policy=1
fi
install() { apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
rc=0
# A clean image has no package lists and a stale one may 404: update only
# when installing from the lists at hand fails, which keeps the common case
# (lists present) to one apt run.
install 2>/dev/null || { apt-get update -q >/dev/null && install; } || rc=$?
((made_policy)) && rm -f /usr/sbin/policy-rc.d
if ((rc != 0)); then
	say "apt-get install ${need[*]} failed (exit $rc)"
	exit 1
fi

# Whatever the install may have started is ours to stop (normally nothing:
# without main.cf there is no system instance).
if [[ -f /etc/postfix/main.cf ]] && /usr/sbin/postfix status >/dev/null 2>&1; then
	say "stopping the system Postfix the install started"
	/usr/sbin/postfix stop >/dev/null 2>&1 || true
fi
for cmd in python3 /usr/sbin/postfix /usr/sbin/sendmail /usr/sbin/postconf chromium redis-server; do
	command -v "$cmd" >/dev/null 2>&1 || {
		say "$cmd still missing after apt-get install ${need[*]}"
		exit 1
	}
done
say "installed ${need[*]}"
