#!/usr/bin/env bash
# Installs mtad: what `make install` runs after `make build`.
#
#   DESTDIR   staging root (packaging, tests); "" installs on this host
#   PREFIX    where bin/ goes (default /usr/local)
#   BIN       the directory holding the built mtad and mtactl (default bin)
#   UNITDIR   systemd unit directory (default /lib/systemd/system)
#   SYSCONFDIR  (default /etc)
#
# An existing /etc/mtad/mtad.yaml (or rules file) is never overwritten: the
# shipped one is left beside it as mtad.yaml.dist. The mtad system user is
# created only when installing on this host as root; otherwise the script
# says what it skipped.
set -euo pipefail

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BIN=${BIN:-bin}
UNITDIR=${UNITDIR:-/lib/systemd/system}
SYSCONFDIR=${SYSCONFDIR:-/etc}
root=$(cd "$(dirname "$0")/.." && pwd)

# Owning files by mtad needs root and a real host: a staged tree (DESTDIR)
# is owned by whoever packages it.
on_host=false
if [[ -z $DESTDIR && $(id -u) == 0 ]]; then
	on_host=true
fi

install -d "$DESTDIR$PREFIX/bin"
install -m 0755 "$BIN/mtad" "$BIN/mtactl" "$DESTDIR$PREFIX/bin/"

# The unit names the binary where PREFIX put it.
install -d "$DESTDIR$UNITDIR"
sed "s|^ExecStart=/usr/local/bin/mtad |ExecStart=$PREFIX/bin/mtad |" "$root/deploy/mtad.service" >"$DESTDIR$UNITDIR/mtad.service.tmp"
grep -q "^ExecStart=$PREFIX/bin/mtad " "$DESTDIR$UNITDIR/mtad.service.tmp" || {
	echo "install: deploy/mtad.service has no ExecStart=/usr/local/bin/mtad line to point at $PREFIX/bin" >&2
	exit 1
}
chmod 0644 "$DESTDIR$UNITDIR/mtad.service.tmp"
mv "$DESTDIR$UNITDIR/mtad.service.tmp" "$DESTDIR$UNITDIR/mtad.service"

install -d "$DESTDIR$SYSCONFDIR/logrotate.d"
install -m 0644 "$root/deploy/logrotate/mtad" "$DESTDIR$SYSCONFDIR/logrotate.d/mtad"

if $on_host; then
	if getent passwd mtad >/dev/null; then
		echo "install: user mtad exists"
	else
		useradd --system --user-group --home-dir /var/spool/mtad --no-create-home --shell /usr/sbin/nologin mtad
		echo "install: created the system user mtad"
	fi
else
	echo "install: not creating the mtad user ($([[ -n $DESTDIR ]] && echo "DESTDIR is set" || echo "not root")); as root: useradd --system --user-group --home-dir /var/spool/mtad --shell /usr/sbin/nologin mtad"
fi

# The spool (the unit's ReadWritePaths; spool.dir in the installed config).
install -d -m 0750 "$DESTDIR/var/spool/mtad"
if $on_host; then
	chown mtad:mtad "$DESTDIR/var/spool/mtad"
fi

# The config, with the paths a service uses: configs/mtad.yaml is made for
# `make run` from the repository (spool in ./var, rules under configs/).
conf="$DESTDIR$SYSCONFDIR/mtad"
install -d -m 0755 "$conf"
put_config() { # put_config SRC NAME [sed args...]: install unless present
	local src=$1 name=$2
	shift 2
	local dst="$conf/$name" tmp
	tmp=$(mktemp)
	sed "$@" "$src" >"$tmp"
	if [[ -e $dst ]]; then
		if ! cmp -s "$tmp" "$dst"; then
			install -m 0640 "$tmp" "$dst.dist"
			echo "install: kept $dst; the shipped one is $dst.dist"
		fi
		rm -f "$tmp"
		return
	fi
	install -m 0640 "$tmp" "$dst"
	rm -f "$tmp"
	if $on_host; then
		chgrp mtad "$dst" # read by the daemon as mtad, not written
	fi
}
# make run's routes of the reserved .test names to its capture sink on
# 127.0.0.1:2526 are for a developer's machine, not a host: "routes: []".
# Its "hostname: localhost" too: on a host the key is left out (commented),
# so mtad names itself after the machine, never "localhost" in EHLO and
# bounces.
put_config "$root/configs/mtad.yaml" mtad.yaml \
	-e "s|^  dir: \./var/spool$|  dir: /var/spool/mtad|" \
	-e "s|^hostname: localhost$|# hostname: mail.example.com   # absent: this machine's host name|" \
	-e "s|^response_rules_file: configs/|response_rules_file: $SYSCONFDIR/mtad/|" \
	-e "/^routes:$/,/^$/{/^routes:$/s|.*|routes: []|;/^  /d}"
put_config "$root/configs/response-rules.yaml" response-rules.yaml -e ''
put_config "$root/configs/bounce-classes.yaml" bounce-classes.yaml -e ''
# A shipped config whose layout changed would silently keep a path that
# does not exist on a host: check what the edits were for.
if [[ -e $conf/mtad.yaml.dist ]]; then shipped=$conf/mtad.yaml.dist; else shipped=$conf/mtad.yaml; fi
grep -q '^  dir: /var/spool/mtad$' "$shipped" || {
	echo "install: could not set spool.dir to /var/spool/mtad in $shipped (configs/mtad.yaml changed layout?)" >&2
	exit 1
}
if grep -q '^response_rules_file: configs/' "$shipped"; then
	echo "install: response_rules_file still points into the repository in $shipped" >&2
	exit 1
fi

echo "install: done. Next: edit $SYSCONFDIR/mtad/mtad.yaml (hostname: the name your binding addresses resolve back to;"
echo "         bindings; inject), then systemctl daemon-reload && systemctl enable --now mtad"
