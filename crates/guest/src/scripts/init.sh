#!/bin/busybox sh
# machinist tiny initramfs: load virtio modules, mount the root disk, apply the node layer,
# switch_root to systemd. Modules are listed in /lib/modules.order (dependencies first).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
read -r up _ < /proc/uptime
echo "machinist-initrd: start at $up s"
while read -r m; do
	insmod "/lib/$m" || echo "machinist-initrd: insmod $m failed"
done < /lib/modules.order
i=0
while [ ! -b /dev/vda ] && [ $i -lt 1000 ]; do usleep 10000; i=$((i + 1)); done
if ! mount -t ext4 -o rw,noatime /dev/vda /sysroot; then
	echo "machinist-initrd: cannot mount /dev/vda; dropping to a shell"
	exec sh
fi
read -r up _ < /proc/uptime
echo "machinist-initrd: root mounted at $up s"
if [ -d /machinist-layer ]; then
	if sh /sysroot/usr/lib/machinist/apply-layer --root /sysroot /machinist-layer; then
		echo "machinist-initrd: node layer applied"
	else
		echo "machinist-initrd: ERROR: apply-layer failed (status $?); booting anyway"
	fi
fi
# The device nodes whose first open loads their module (/dev/net/tun, /dev/fuse, ...), as
# systemd's kmod-static-nodes and tmpfiles-setup-dev make them (both masked: under TCG they cost
# processes and delay udev). modules.devname lines: "<module> <node> <c|b><major>:<minor>".
devname=/sysroot/lib/modules/$(uname -r)/modules.devname
if [ -f "$devname" ]; then
	while read -r mod node dev; do
		case $mod in '' | '#'*) continue ;; esac
		[ -e "/dev/$node" ] && continue
		t=${dev%%[0-9]*} n=${dev#?}
		case $node in */*) mkdir -p "/dev/${node%/*}" ;; esac
		mknod -m 0600 "/dev/$node" "$t" "${n%:*}" "${n#*:}" || echo "machinist-initrd: mknod /dev/$node failed"
	done < "$devname"
fi
read -r up _ < /proc/uptime
echo "machinist-initrd: switch_root at $up s"
umount /proc
mount --move /dev /sysroot/dev
exec switch_root /sysroot /sbin/init "$@"
