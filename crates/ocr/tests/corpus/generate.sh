#!/usr/bin/env bash
# Regenerates the OCR accuracy corpus (PNG screenshots + their true text) from real guests.
#
# Boots Debian's cloud kernel under QEMU (TCG, std VGA, text console) with a throwaway
# busybox-static initramfs whose /init draws one "scene" on tty1, then dumps the console's
# exact character contents (/dev/vcs1) to the serial port. The host takes a QMP `screendump`
# between two identical dumps, so the PNG and the .txt describe the same screen.
#
# Usage: crates/ocr/tests/corpus/generate.sh [scene...]   (default: all scenes)
# Needs: qemu-system-x86_64, busybox-static, cpio, apt-get (for the kernel, whiptail, fonts),
#        python3 (QMP client), cargo (our own PPM->PNG example).
# Takes the host VM lock (/tmp/machinist-vm-tests.lock) around each boot.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../../.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/machinist/ocr-corpus
mkdir -p "$cache"
work=$(mktemp -d /tmp/ocr-corpus.XXXXXX)
trap 'rm -rf "$work"' EXIT

all_scenes=(glyphs boot login console colors dialog menu large huge)
# "glyphs" is not a test image: it is the glyph sheet the console-font reader learns the VGA
# font from (written to crates/ocr/fonts/, with fonts/vga-8x16.txt as its truth).
scenes=("$@")
[ ${#scenes[@]} -gt 0 ] || scenes=("${all_scenes[@]}")

# --- 1. Debian packages (kernel, whiptail and its libraries, console fonts) -------------------
fetch() { # fetch <package>: download + extract once into $cache/root
    local pkg=$1
    if [ ! -e "$cache/.have-$pkg" ]; then
        (cd "$cache" && apt-get download "$pkg" >/dev/null 2>&1)
        dpkg-deb -x "$(ls -t "$cache"/"${pkg}"_*.deb | head -n1)" "$cache/root"
        touch "$cache/.have-$pkg"
    fi
}
kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -n1)
for p in "$kpkg" whiptail libnewt0.52 libpopt0 libslang2 console-setup-linux; do fetch "$p"; done
kernel=$(ls "$cache"/root/boot/vmlinuz-* | head -n1)

# --- 2. initramfs -------------------------------------------------------------------------------
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,etc,tmp,lib64,lib/x86_64-linux-gnu,lib/terminfo/l,fonts}
cp /bin/busybox "$rootfs/bin/busybox"
cp "$cache/root/usr/bin/whiptail" "$rootfs/usr/bin/"
for lib in libnewt.so.0.52 libpopt.so.0 libslang.so.2; do
    cp -L "$(find "$cache/root" -name "$lib" | head -n1)" "$rootfs/lib/x86_64-linux-gnu/"
done
for lib in libc.so.6 libm.so.6; do cp -L "/lib/x86_64-linux-gnu/$lib" "$rootfs/lib/x86_64-linux-gnu/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$rootfs/lib64/"
cp /lib/terminfo/l/linux "$rootfs/lib/terminfo/l/"
# A tall 8x32 console font (vgacon needs 8-pixel-wide glyphs): Lat15-VGA16 with every row doubled.
python3 - "$cache/root/usr/share/consolefonts/Lat15-VGA16.psf.gz" "$rootfs/fonts/tall32.psf" <<'PY'
import gzip, sys
data = gzip.open(sys.argv[1]).read()
assert data[:2] == b"\x36\x04" and data[3] == 16, "expected a PSF1 8x16 font"
mode, glyphs = data[2], (512 if data[2] & 1 else 256)
body = data[4:4 + 16 * glyphs]
doubled = bytearray()
for g in range(glyphs):
    for row in body[16 * g:16 * g + 16]:
        doubled += bytes([row, row])
open(sys.argv[2], "wb").write(bytes([0x36, 0x04, mode, 32]) + bytes(doubled) + data[4 + 16 * glyphs:])
PY

cp "$here/../../fonts/vga-8x16.txt" "$rootfs/sheet.txt"
cat >"$rootfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
export PATH=/bin:/sbin:/usr/bin:/usr/sbin TERM=linux HOME=/root
hostname testvm
scene=$(sed -n 's/.*scene=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
T=/dev/tty1
clear_tty() { printf '\033[H\033[2J\033[3J' >$T; }
hide_cursor() { printf '\033[?25l' >$T; }
run() { # run <command...>: a shell prompt plus the command's real output on the console
    printf 'root@testvm:~# %s\n' "$*" >$T
    sh -c "$*" >$T 2>&1
}
dump() { # the console's characters, rows x cols bytes, between markers on the serial port
    echo "@@VCS-BEGIN $1 $(stty -F $T size)" >/dev/ttyS0
    tr '\000-\037' ' ' </dev/vcs1 >/dev/ttyS0
    echo "" >/dev/ttyS0
    echo "@@VCS-END $1" >/dev/ttyS0
}
sleep 1
case "$scene" in
boot) sleep 2 ;;
glyphs) clear_tty; hide_cursor; cat /sheet.txt >$T ;;
login)
    clear_tty
    printf 'Debian GNU/Linux 12 \\n \\l\n\n' >/etc/issue
    setsid getty 38400 tty1 linux &
    ;;
console)
    clear_tty
    run 'echo HELLO-OCR-4711'
    run 'uname -a'
    run 'echo "The quick brown fox jumps over the lazy dog."'
    run 'ls /'
    run 'df -h /'
    run 'free -m'
    run 'cat /proc/version'
    run 'echo "Welcome to Machinist: PostgREST tutorial server ready on port 3000"'
    printf 'root@testvm:~# ' >$T
    ;;
colors)
    clear_tty; hide_cursor
    ok() { printf '[\033[0;32m  OK  \033[0m] %s\n' "$1" >$T; }
    ok 'Started systemd-journald.service - Journal Service.'
    ok 'Reached target local-fs.target - Local File Systems.'
    printf '[\033[0;1;31mFAILED\033[0m] Failed to start nginx.service - A high performance web server.\n' >$T
    printf "See 'systemctl status nginx.service' for details.\n" >$T
    ok 'Started postgresql.service - PostgreSQL RDBMS.'
    printf '         Starting \033[0;1;39mpostgrest.service\033[0m - REST API for PostgreSQL...\n' >$T
    printf '\033[1;33mWARNING:\033[0m disk usage above \033[1;31m90%%\033[0m on /var\n' >$T
    printf '\033[7m Reverse video status line: 3 jobs queued \033[0m\n' >$T
    printf '\033[44;37m White text on a blue background \033[0m\n' >$T
    printf '\033[46;30m Black text on a cyan background \033[0m\n' >$T
    printf '\033[1;34mdrwxr-xr-x\033[0m  2 root root 4096 May  9 07:30 \033[1;34mbackups\033[0m\n' >$T
    printf '\033[1;32m-rwxr-xr-x\033[0m  1 root root 1234 May  9 07:31 \033[1;32mdeploy.sh\033[0m\n' >$T
    ;;
dialog)
    setsid sh -c 'exec whiptail --title "Configuring tzdata" --yesno "Please select the geographic area in which you live. Subsequent configuration questions will narrow this down by presenting a list of cities. Continue with the installation?" 12 64 <>/dev/tty1 >&0 2>&0' &
    ;;
menu)
    setsid sh -c 'exec whiptail --title "Package configuration" --menu "Choose the database for the tutorial server:" 16 60 5 postgresql "PostgreSQL 15 (recommended)" sqlite "SQLite embedded database" mariadb "MariaDB server" none "Skip database setup" <>/dev/tty1 >&0 2>&0' &
    ;;
large|huge)
    [ "$scene" = huge ] && loadfont </fonts/tall32.psf
    clear_tty; hide_cursor
    printf 'Machinist large font\n' >$T
    printf 'HELLO-OCR-4711\n' >$T
    printf 'testvm login: root\n' >$T
    printf 'Password incorrect.\n' >$T
    printf 'Server ready on port 3000\n' >$T
    printf 'The quick brown fox\n' >$T
    ;;
*) echo "unknown scene '$scene'" >/dev/ttyS0 ;;
esac
sleep 2
dump 1
sleep 3
dump 2
while :; do sleep 60; done
INIT
chmod +x "$rootfs/init"
(cd "$rootfs" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"

# --- 3. boot each scene, screendump via QMP, write PNG + truth ------------------------------------
cargo build -q -p machinist-ocr --example ppm2png
ppm2png=${CARGO_TARGET_DIR:-$repo/target}/debug/examples/ppm2png

for scene in "${scenes[@]}"; do
    append="console=ttyS0 console=tty0 scene=$scene"
    case $scene in large | huge) append="$append vga=0x101" ;; esac # BIOS mode 1: 40x25 text
    echo "corpus: scene $scene" >&2
    flock /tmp/machinist-vm-tests.lock python3 - "$work" "$scene" "$kernel" "$append" <<'PY'
import json, os, socket, subprocess, sys, time
work, scene, kernel, append = sys.argv[1:5]
sock, serial, ppm = f"{work}/qmp.sock", f"{work}/{scene}.serial", f"{work}/{scene}.ppm"
qemu = subprocess.Popen([
    "qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "512", "-display", "none",
    "-vga", "std", "-qmp", f"unix:{sock},server=on,wait=off", "-no-reboot",
    "-kernel", kernel, "-initrd", f"{work}/initrd.gz", "-append", append,
    "-serial", f"file:{serial}"])
try:
    deadline = time.time() + 120
    def wait_marker(m):
        while time.time() < deadline:
            if os.path.exists(serial) and m in open(serial, "rb").read():
                return
            if qemu.poll() is not None:
                sys.exit(f"QEMU exited early ({qemu.returncode}) in scene {scene}")
            time.sleep(0.2)
        sys.exit(f"timed out waiting for {m!r} in scene {scene}")
    wait_marker(b"@@VCS-END 1")
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    f = s.makefile("rwb")
    f.readline()
    def qmp(cmd, **args):
        f.write(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n"); f.flush()
        while True:
            r = json.loads(f.readline())
            if "return" in r or "error" in r:
                return r
    qmp("qmp_capabilities")
    assert "return" in qmp("screendump", filename=ppm)
    wait_marker(b"@@VCS-END 2")
    qmp("quit")
finally:
    try:
        qemu.wait(timeout=10)
    except subprocess.TimeoutExpired:
        qemu.kill()
PY
    python3 - "$work/$scene.serial" "$here/$scene.txt" <<'PY'
import re, sys
data = open(sys.argv[1], "rb").read()
dumps = []
for n in (1, 2):
    m = re.search(rb"@@VCS-BEGIN %d (\d+) (\d+)\r?\n" % n, data)
    rows, cols = int(m.group(1)), int(m.group(2))
    raw = data[m.end():m.end() + rows * cols]
    text = "".join(chr(b) if 32 <= b < 127 else " " for b in raw)
    lines = [text[i:i + cols].rstrip() for i in range(0, rows * cols, cols)]
    dumps.append("\n".join(l for l in lines if l.strip()) + "\n")
if dumps[0] != dumps[1]:
    sys.exit(f"screen changed between the two dumps of {sys.argv[1]}; run again")
open(sys.argv[2], "w").write(dumps[0])
PY
    if [ "$scene" = glyphs ]; then
        # The truth of the sheet is the sheet itself (vcs shows only its ASCII part).
        grep -qF 'ABCDEFGHIJKLMNO' "$here/glyphs.txt" && rm "$here/glyphs.txt"
        "$ppm2png" "$work/$scene.ppm" "$here/../../fonts/vga-8x16.png"
        echo "corpus: wrote fonts/vga-8x16.png" >&2
        continue
    fi
    "$ppm2png" "$work/$scene.ppm" "$here/$scene.png"
    echo "corpus: wrote $here/$scene.png and $scene.txt" >&2
done
