#!/bin/sh
# machinist apply-layer: install a rendered node layer into a root filesystem.
#
#   apply-layer [--root DIR] [--live] LAYERDIR
#
# LAYERDIR holds root/ (files and symlinks, no directory entries, so existing directories keep
# their owner and mode), owners ("user group path" lines), units (units to restart when --live).
# Runs under busybox sh in the initramfs (--root /sysroot, before switch_root) and under dash on
# a running machine (--live: reload systemd, create users, reapply network and firewall, start units).
set -eu

ROOT=/
LIVE=0
while [ $# -gt 0 ]; do
	case "$1" in
	--root) ROOT=$2; shift 2 ;;
	--live) LIVE=1; shift ;;
	--) shift; break ;;
	-*) echo "apply-layer: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
L=${1:?usage: apply-layer [--root DIR] [--live] LAYERDIR}
[ -d "$L/root" ] || { echo "apply-layer: $L/root: no such layer directory" >&2; exit 2; }
case "$ROOT" in /) P= ;; *) P=${ROOT%/} ;; esac

inroot() {
	if [ -z "$P" ]; then "$@"; else chroot "$P" "$@"; fi
}

# 1. Files and symlinks.
# (Paths are validated to contain no blanks or glob characters; busybox tar has no -T.)
set -f
# shellcheck disable=SC2046
(cd "$L/root" && tar -cf "$L/.tar" $(find . ! -type d))
set +f
tar -xpf "$L/.tar" -C "$ROOT"
rm -f "$L/.tar"

# 2. Users and groups.
if [ -s "$P/etc/sysusers.d/machinist.conf" ]; then
	inroot systemd-sysusers /etc/sysusers.d/machinist.conf
fi

# 3. Owners (names resolved against the target's own passwd and group files).
if [ -s "$L/owners" ]; then
	awk -v p="$P" '
		FILENAME == ARGV[1] { split($0, f, ":"); uid[f[1]] = f[3]; next }
		FILENAME == ARGV[2] { split($0, f, ":"); gid[f[1]] = f[3]; next }
		NF >= 3 {
			if (!($1 in uid)) { print "apply-layer: no user " $1 " for " $3 > "/dev/stderr"; bad = 1; next }
			if (!($2 in gid)) { print "apply-layer: no group " $2 " for " $3 > "/dev/stderr"; bad = 1; next }
			k = uid[$1] ":" gid[$2]; files[k] = files[k] " " p $3
		}
		END { for (k in files) print "chown -h " k files[k]; exit bad }
	' "$P/etc/passwd" "$P/etc/group" "$L/owners" > "$L/.chown"
	sh -e "$L/.chown"
	rm -f "$L/.chown"
fi

[ "$LIVE" = 1 ] || exit 0
# Each step logs when it is done (seconds since boot), to see where a warm start spends its time.
T() { read -r up _ </proc/uptime; echo "apply-layer: $1 done at $up"; }
T files+users

# 4. Live: make the running system match.
cat /etc/hostname > /proc/sys/kernel/hostname
if [ -s /etc/tmpfiles.d/machinist.conf ]; then
	systemd-tmpfiles --create /etc/tmpfiles.d/machinist.conf
fi
T tmpfiles
systemctl daemon-reload
T daemon-reload
if [ -e /etc/systemd/system/sysinit.target.wants/machinist-firewall.service ]; then
	nft -f /etc/nftables.conf
else
	nft flush ruleset 2>/dev/null || true
fi
T nft
# Not waited for: at a cold boot networkd also configures the links while the units start.
# shellcheck disable=SC2046
systemctl --no-block restart systemd-networkd.service $(cat "$L/units" 2>/dev/null)
T units
