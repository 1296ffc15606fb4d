#!/usr/bin/env bash
# Makes sure this Debian host has what the test suite drives: real NBD clients,
# a kernel block device path (nbdfuse + losetup), PostgreSQL, qemu for the
# kernel /dev/nbd0 test. Installs what is missing when it can (root + apt-get);
# otherwise it fails and names the command to run. It never lets tests skip.
set -euo pipefail

# command-or-file -> Debian package
declare -A NEED=(
  [nbdkit]=nbdkit
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdsh]=python3-libnbd
  [nbdfuse]=nbdfuse
  [/usr/lib/python3/dist-packages/nbd.py]=python3-libnbd
  [nbd-client]=nbd-client
  [qemu-io]=qemu-utils
  [qemu-img]=qemu-utils
  [fio]=fio
  [fusermount3]=fuse3
  [mkfs.ext4]=e2fsprogs
  [e2fsck]=e2fsprogs
  [losetup]=mount
  [ip]=iproute2
  [/usr/lib/postgresql/15/bin/initdb]=postgresql
  [/usr/lib/postgresql/15/bin/pg_amcheck]=postgresql
  [qemu-system-x86_64]=qemu-system-x86
  [cpio]=cpio
  [/bin/busybox]=busybox-static
  [openssl]=openssl
  [certtool]=gnutls-bin
  [psktool]=gnutls-bin
  [systemd-analyze]=systemd
  [g++]=g++
  # xdevice-nbd-attach: gcc builds it (static for the VM initramfs: libc.a), and
  # its fuzz harness under ASan/UBSan (their runtimes come with gcc)
  [gcc]=gcc
  [/usr/lib/x86_64-linux-gnu/libc.a]=libc6-dev
  [/usr/include/linux/nbd-netlink.h]=linux-libc-dev
  [make]=make
  [python3]=python3
  [runuser]=util-linux
  [promtool]=prometheus
  [prometheus]=prometheus
  [chromium]=chromium
)

have() {
  case "$1" in
    /*) [[ -e "$1" ]] ;;
    *) PATH="/usr/sbin:/sbin:/usr/bin:$PATH" command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing=()
for what in "${!NEED[@]}"; do
  have "$what" || missing+=("${NEED[$what]}")
done
# the kernel image for the /dev/nbd0 VM test
ls /boot/vmlinuz-* >/dev/null 2>&1 || missing+=(linux-image-amd64)
# busybox must be the static one: it runs inside the VM's initramfs
if [[ -x /bin/busybox ]] && ldd /bin/busybox >/dev/null 2>&1; then missing+=(busybox-static); fi

if (( ${#missing[@]} == 0 )); then exit 0; fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "setup-test-host: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp /tmp/xdevice-apt.XXXXXX.log)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "apt-get install failed; run: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "setup-test-host: installed (log: $log)" >&2
