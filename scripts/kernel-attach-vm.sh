#!/usr/bin/env bash
# kernel-attach-vm.sh — attach a real Linux /dev/nbd0 to an XDevice export.
#
# This host's kernel has no nbd module, so we boot Debian's own kernel under
# qemu with a throw-away initramfs (busybox, nbd.ko and its dependencies,
# nbd-client, mke2fs, e2fsck). Inside the guest: nbd-client attaches the
# export, mkfs.ext4, mount, write a file with O_SYNC-ish dd conv=fsync, read it
# back, unmount, detach, reattach (so the data must come from the server, not
# the guest's page cache), e2fsck -fn, and compare checksums.
#
# Usage: kernel-attach-vm.sh PORT [EXPORT]
#   The server listens on 127.0.0.1:PORT; the guest reaches it as 10.0.2.2:PORT
#   (qemu user networking). The export's contents are destroyed.
# The guest prints progress lines "XDVM: <phase>" on the console, which this
# script copies to stderr as they happen, so a caller can act on a phase
# (the fault test kills the Raft leader when it sees "XDVM: write-start").
#
# XDVM_ATTACHER=xdevice attaches with our own xdevice-nbd-attach (native/attach,
# built here statically with gcc -static) instead of nbd-client. It stays running
# in the guest and reconnects when the server goes away; the guest writes the
# file in 1 MiB pieces, each with fsync, and with XDVM_EXPECT_RECONNECT=1 keeps
# writing (round and round the file) until the attacher has logged a reconnect
# ("XDVM: reconnected"), so the host can restart the very node the guest uses
# while the writes go on: they must pause, not fail.
#
# Environment: XDVM_FILE_MB (default 32), XDVM_TIMEOUT (seconds, default 420),
#   XDVM_MEM_MB (default 384), XDVM_WORKDIR (kept), XDVM_KERNEL + XDVM_MODDIR,
#   XDVM_ATTACHER (nbd-client | xdevice), and for xdevice: XDVM_CONNECTIONS
#   (default 1), XDVM_NBD_TIMEOUT (default 10), XDVM_DEAD_CONN_TIMEOUT
#   (default 120), XDVM_EXPECT_RECONNECT (0/1), XDVM_EXTRA_PORTS (fallback
#   endpoints on 10.0.2.2, comma-separated).
# Exit: 0 pass, 1 the guest reported a failure, 2 setup error, 124 timeout.
set -euo pipefail

PORT=${1:?usage: kernel-attach-vm.sh PORT [EXPORT]}
EXPORT=${2:-default}
FILE_MB=${XDVM_FILE_MB:-32}
TIMEOUT=${XDVM_TIMEOUT:-420}
MEM_MB=${XDVM_MEM_MB:-384}
# Extra nbd-client flags in the guest, e.g. XDVM_NBD_FLAGS=-persist (one word: it rides on the kernel command line).
NBD_FLAGS=${XDVM_NBD_FLAGS:-}
ATTACHER=${XDVM_ATTACHER:-nbd-client}
CONNECTIONS=${XDVM_CONNECTIONS:-1}
NBD_TIMEOUT=${XDVM_NBD_TIMEOUT:-10}
DEAD_CONN_TIMEOUT=${XDVM_DEAD_CONN_TIMEOUT:-120}
EXPECT_RECONNECT=${XDVM_EXPECT_RECONNECT:-0}
EXTRA_PORTS=${XDVM_EXTRA_PORTS:-}
SRC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { echo "[kernel-attach-vm] $*" >&2; }
die() { say "error: $*"; exit 2; }
case "$ATTACHER" in nbd-client|xdevice) ;; *) die "XDVM_ATTACHER: nbd-client or xdevice, not $ATTACHER" ;; esac

for tool in qemu-system-x86_64 cpio gzip xz; do command -v "$tool" >/dev/null || die "$tool missing (scripts/setup-test-host.sh installs it)"; done
NBD_CLIENT=$(PATH=/usr/sbin:/sbin:$PATH command -v nbd-client) || die "nbd-client missing"
MKE2FS=$(PATH=/usr/sbin:/sbin:$PATH command -v mke2fs) || die "mke2fs missing"
E2FSCK=$(PATH=/usr/sbin:/sbin:$PATH command -v e2fsck) || die "e2fsck missing"
[[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || die "a static /bin/busybox is needed (busybox-static)"

# ---- the kernel: newest /boot/vmlinuz-* that has its modules installed
KERNEL=${XDVM_KERNEL:-}
MODDIR=${XDVM_MODDIR:-}
if [[ -z "$KERNEL" ]]; then
  for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
    v=${k#/boot/vmlinuz-}
    if [[ -f /lib/modules/$v/modules.dep ]]; then KERNEL=$k; MODDIR=/lib/modules/$v; break; fi
  done
fi
[[ -n "$KERNEL" && -r "$KERNEL" ]] || die "no kernel with modules in /boot (apt-get install linux-image-amd64)"

if [[ -n "${XDVM_WORKDIR:-}" ]]; then WORK=$XDVM_WORKDIR; mkdir -p "$WORK"; KEEP=1
else WORK=$(mktemp -d /tmp/xdvm.XXXXXX); KEEP=0; fi
QEMU_PID=
cleanup() {
  [[ -n "$QEMU_PID" ]] && kill "$QEMU_PID" 2>/dev/null || true
  [[ $KEEP = 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# ---- modules: resolve each wanted module and its dependencies from modules.dep
ROOT=$WORK/root
rm -rf "$ROOT"; mkdir -p "$ROOT"/{bin,sbin,usr/sbin,etc,proc,sys,dev,mnt,tmp,modules}
declare -A SEEN=()
ORDER=()
dep_line() { awk -F: -v m="$1" '{ n=$1; sub(/^.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n); gsub(/-/, "_", n); if (n == m) { print; exit } }' "$MODDIR/modules.dep"; }
add_module() {  # $1: path relative to MODDIR
  local rel=$1 deps d
  [[ -n "${SEEN[$rel]:-}" ]] && return 0
  SEEN[$rel]=1
  deps=$(awk -F: -v r="$rel" '$1 == r { print $2; exit }' "$MODDIR/modules.dep")
  for d in $deps; do add_module "$d"; done
  ORDER+=("$rel")
}
for m in nbd e1000 crc32c_generic ext4; do
  line=$(dep_line "${m//-/_}")
  if [[ -z "$line" ]]; then
    grep -qE "/${m//_/[-_]}\.ko" "$MODDIR/modules.builtin" 2>/dev/null && continue
    die "module $m not found for $(basename "$MODDIR")"
  fi
  add_module "${line%%:*}"
done
: > "$ROOT/etc/modules"
for rel in "${ORDER[@]}"; do
  base=$(basename "$rel")
  case "$base" in
    *.ko.xz) xz -dc "$MODDIR/$rel" > "$ROOT/modules/${base%.xz}"; base=${base%.xz} ;;
    *.ko.zst) zstd -qdc "$MODDIR/$rel" > "$ROOT/modules/${base%.zst}"; base=${base%.zst} ;;
    *.ko.gz) gzip -dc "$MODDIR/$rel" > "$ROOT/modules/${base%.gz}"; base=${base%.gz} ;;
    *) cp "$MODDIR/$rel" "$ROOT/modules/$base" ;;
  esac
  echo "$base" >> "$ROOT/etc/modules"
done

# ---- programs and the shared libraries they load
cp /bin/busybox "$ROOT/bin/busybox"
install_elf() {
  local src; src=$(readlink -f "$1")
  cp "$src" "$ROOT/usr/sbin/$(basename "$1")"
  ldd "$src" | grep -oE '/[^ ]+' | while read -r lib; do
    [[ -e "$lib" && ! -e "$ROOT$lib" ]] || continue
    mkdir -p "$ROOT$(dirname "$lib")"; cp -L "$lib" "$ROOT$lib"
  done
}
install_elf "$NBD_CLIENT"; install_elf "$MKE2FS"; install_elf "$E2FSCK"
if [[ $ATTACHER = xdevice ]]; then
  # Static: the initramfs has no libc of its own for it (glibc static is fine, addresses are numeric).
  command -v gcc >/dev/null || die "gcc missing (needed for a static xdevice-nbd-attach)"
  A=$SRC_ROOT/native/attach
  gcc -static -std=gnu11 -O2 -Wall -Wextra -o "$ROOT/usr/sbin/xdevice-nbd-attach" \
    "$A/xdevice-nbd-attach.c" "$A/nbd_handshake.c" "$A/nbd_netlink.c" "$A/nbd_parse.c" || die "building a static xdevice-nbd-attach"
  mkdir -p "$ROOT/run"
fi
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$ROOT/etc/"

cat > "$ROOT/init" <<'GUEST'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
echo 1 > /proc/sys/kernel/printk
for arg in $(cat /proc/cmdline); do case $arg in xdvm.*=*) k=${arg%%=*}; eval "${k#xdvm.}='${arg#*=}'";; esac; done
phase() { echo "XDVM: $*"; }
fail() { echo "XDVM-RESULT: FAIL $*"; dmesg | tail -n 30; poweroff -f; }
for m in $(cat /etc/modules); do insmod /modules/$m || fail "insmod $m"; done
ip link set lo up; ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
attach() {
  if [ "$attacher" = xdevice ]; then
    eps="--endpoint 10.0.2.2:$port"
    for p in $(echo "$extraports" | tr ',' ' '); do eps="$eps --endpoint 10.0.2.2:$p"; done
    # A device just detached may still be tearing down (EBUSY): try a few times.
    n=0
    until /usr/sbin/xdevice-nbd-attach --device /dev/nbd0 --export "$export" $eps --connections "$conns" \
        --timeout "$nbdtimeout" --dead-conn-timeout "$deadtimeout" 2>>/tmp/attach.log; do
      n=$((n+1)); [ $n -lt 10 ] || { cat /tmp/attach.log; return 1; }; sleep 0.5
    done
  else
    /usr/sbin/nbd-client -N "$export" -b 4096 -t 60 $nbdflags 10.0.2.2 "$port" /dev/nbd0 || return 1
  fi
  i=0; while [ "$(cat /sys/block/nbd0/size)" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  [ "$(cat /sys/block/nbd0/size)" != 0 ]
}
detach() {
  if [ "$attacher" = xdevice ]; then /usr/sbin/xdevice-nbd-attach --disconnect /dev/nbd0 2>>/tmp/attach.log
  else /usr/sbin/nbd-client -d /dev/nbd0; fi
}
# The attacher's log lines reach the console as they are written.
: > /tmp/attach.log
[ "$attacher" = xdevice ] && { tail -f /tmp/attach.log & }
attach || fail "$attacher could not attach 10.0.2.2:$port/$export"
phase "attached size=$(blockdev --getsize64 /dev/nbd0)"
if [ "$attacher" = xdevice ]; then
  /usr/sbin/xdevice-nbd-attach --status /dev/nbd0 || fail "--status does not see the device attached"
  daemon=$(cat /run/xdevice-nbd-attach.nbd0.pid) || fail "no pid file"
fi
/usr/sbin/mke2fs -t ext4 -F -q -E nodiscard /dev/nbd0 > /tmp/mkfs 2>&1 || { cat /tmp/mkfs; fail "mkfs.ext4"; }
mount -t ext4 /dev/nbd0 /mnt || fail "mount"
dd if=/dev/urandom of=/tmp/data bs=1M count="$mb" 2>/dev/null
want=$(md5sum /tmp/data | cut -d' ' -f1)
phase "write-start"
if [ "$attacher" = xdevice ]; then
  # 1 MiB at a time, each with fsync; with expect_reconnect, round and round the
  # file until the attacher has replaced a dead connection (bounded: 40 laps).
  c=0; laps=0; seen=0
  while :; do
    dd if=/tmp/data of=/mnt/data bs=1M count=1 skip=$c seek=$c conv=notrunc,fsync 2>/tmp/dd.err || { cat /tmp/dd.err; fail "write of MiB $c (lap $laps)"; }
    if [ $seen = 0 ] && grep -q "reconnected" /tmp/attach.log; then seen=1; phase "reconnected during MiB $c (lap $laps)"; fi
    c=$((c+1))
    if [ $c -ge "$mb" ]; then
      c=0; laps=$((laps+1))
      [ "$expectreconnect" = 1 ] && [ $seen = 0 ] || break
      [ $laps -lt 40 ] || fail "no reconnect after 40 laps of writing"
    fi
  done
else
  dd if=/tmp/data of=/mnt/data bs=64k conv=fsync 2>/dev/null || fail "write"
fi
sync || fail "sync"
phase "write-done"
# The daemon looked at the device's status every 5 s meanwhile: it must not have left.
[ "$attacher" = xdevice ] && { kill -0 "$daemon" 2>/dev/null || fail "the attacher daemon exited while attached"; }
umount /mnt || fail "umount"
detach
echo 3 > /proc/sys/vm/drop_caches
attach || fail "re-attach"
phase "reattached"
/usr/sbin/e2fsck -fn /dev/nbd0 > /tmp/fsck 2>&1 || { cat /tmp/fsck; fail "e2fsck -fn found errors"; }
mount -t ext4 -o ro /dev/nbd0 /mnt || fail "mount ro"
got=$(md5sum /mnt/data | cut -d' ' -f1)
umount /mnt
if [ "$attacher" = xdevice ]; then
  # Detached behind the daemon's back (its pid file not given): it must notice and exit.
  daemon=$(cat /run/xdevice-nbd-attach.nbd0.pid) || fail "no pid file after the reattach"
  /usr/sbin/xdevice-nbd-attach --disconnect /dev/nbd0 --pid-file /tmp/no-daemon.pid 2>>/tmp/attach.log || fail "--disconnect"
  i=0; while kill -0 "$daemon" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
  kill -0 "$daemon" 2>/dev/null && fail "the attacher did not notice that its device was detached"
  phase "daemon-left"
else
  detach
fi
if [ "$attacher" = xdevice ]; then
  # The kernel tears the configuration down once its receive threads have ended.
  i=0; while /usr/sbin/xdevice-nbd-attach --status /dev/nbd0 >/dev/null 2>&1 && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
  /usr/sbin/xdevice-nbd-attach --status /dev/nbd0; st=$?
  [ $st = 3 ] || fail "--status after --disconnect: exit $st, want 3 (not attached)"
fi
[ "$want" = "$got" ] || fail "checksum: wrote $want, read back $got"
echo "XDVM-RESULT: PASS md5=$want"
poweroff -f
GUEST
chmod 755 "$ROOT/init"
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || true
( cd "$ROOT" && find . | cpio -o -H newc -R 0:0 --quiet ) | gzip -1 > "$WORK/initrd.gz"

# Applets of the guest shell win over PATH (busybox standalone shell), so the real
# tools are called by full path.
# Boot the uncompressed kernel through its PVH entry when we can extract it:
# under TCG this skips emulating the xz decompressor.
BOOT=$KERNEL
off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$KERNEL" | head -n1 | cut -d: -f1 || true)
if [[ -n "$off" ]]; then
  tail -c +$((off + 1)) "$KERNEL" | xz -dc > "$WORK/vmlinux" 2>/dev/null || true
  [[ "$(head -c 4 "$WORK/vmlinux" 2>/dev/null | od -An -c | tr -d ' ')" == '177ELF' ]] && BOOT=$WORK/vmlinux
fi

say "booting $(basename "$KERNEL") (image $(basename "$BOOT")), export $EXPORT at 10.0.2.2:$PORT, ${FILE_MB} MiB, attacher $ATTACHER"
CONSOLE=$WORK/console.log
: > "$CONSOLE"
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -machine pc -m "$MEM_MB" -smp 1 \
  -nographic -no-reboot -kernel "$BOOT" -initrd "$WORK/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init tsc=unstable i8042.noaux xdvm.port=$PORT xdvm.export=$EXPORT xdvm.mb=$FILE_MB xdvm.nbdflags=$NBD_FLAGS xdvm.attacher=$ATTACHER xdvm.conns=$CONNECTIONS xdvm.nbdtimeout=$NBD_TIMEOUT xdvm.deadtimeout=$DEAD_CONN_TIMEOUT xdvm.expectreconnect=$EXPECT_RECONNECT xdvm.extraports=$EXTRA_PORTS" \
  -netdev user,id=n0 -device e1000,netdev=n0,romfile= </dev/null >"$CONSOLE" 2>&1 &
QEMU_PID=$!
# Relay the guest's phase lines (and the attacher's log lines) as they appear.
tail -n +1 -f --pid="$QEMU_PID" "$CONSOLE" 2>/dev/null | grep --line-buffered -a -e 'XDVM' -e 'xdevice-nbd-attach:' | sed -u 's/\r$//' >&2 &
set +e; wait "$QEMU_PID"; rc=$?; set -e
QEMU_PID=
sleep 0.3
if grep -aq 'XDVM-RESULT: PASS' "$CONSOLE"; then echo PASS; exit 0; fi
KEEP=1
say "console log: $CONSOLE"
tr -d '\r' < "$CONSOLE" | tail -n 40 >&2
[[ $rc = 124 || $rc = 137 ]] && { echo "FAIL timeout"; exit 124; }
echo "FAIL $(tr -d '\r' < "$CONSOLE" | grep -a 'XDVM-RESULT' | head -n1)"
exit 1
