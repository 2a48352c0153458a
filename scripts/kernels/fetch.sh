#!/bin/bash
# fetch.sh - get the Debian kernels of the matrix into the cache, extracted, NOT installed:
#   apt-get download linux-image-<ver> ; dpkg -x ; unpack the ELF vmlinux for a fast PVH boot.
# usage: fetch.sh [line...]     lines: 6.1 6.12 or an exact package version such as
#                                6.1.0-56-amd64 / 6.12.117+deb12-amd64, and the incident kernels
#                                6.1-bug / 6.1-fixed: the 6.1 kernel with its KVM modules rebuilt
#                                by incident.sh (default: 6.1 6.12 6.1-bug 6.1-fixed)
# Prints one "<line> <kernel dir>" per kernel on stdout. Cache: $KVMFAULT_KERNEL_CACHE or
# <repo>/.cache/kernels (git-ignored). Exit 0 ok, 3 = cannot get the kernels (apt, network),
# 4/5 = an incident kernel cannot be built (a tool missing / the edit or build failed).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${KVMFAULT_KERNEL_CACHE:-$REPO/.cache/kernels}
mkdir -p "$CACHE"
log() { echo "kernels: $*" >&2; }

# newest linux-image package of one release line that apt knows (no -dbg/-unsigned/-rt/-cloud)
newest() {
  local re
  case $1 in
    6.1) re='^linux-image-6\.1\.0-[0-9]+-amd64$' ;;
    6.12) re='^linux-image-6\.12\.[0-9]+\+deb12-amd64$' ;;
    *) echo "linux-image-$1"; return ;;
  esac
  apt-cache pkgnames linux-image-6. 2>/dev/null | grep -E "$re" | sort -V | tail -1
}

# unpack the ELF vmlinux inside a bzImage: PVH boot skips real mode + decompression under TCG
unpack_vmlinux() { # $1 vmlinuz, $2 output
  python3 - "$1" "$2" <<'PY'
import sys, lzma, zlib, subprocess
data = open(sys.argv[1], 'rb').read()
def xz(b): return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(b)
def gz(b): return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b)
def zst(b): return subprocess.run(['zstd', '-dcq'], input=b, capture_output=True).stdout
for magic, fn in ((b'\xfd7zXZ\x00', xz), (b'\x28\xb5\x2f\xfd', zst), (b'\x1f\x8b\x08', gz)):
    at = data.find(magic)
    while at >= 0:
        try:
            out = fn(data[at:])
        except Exception:
            out = b''
        if out[:4] == b'\x7fELF':
            open(sys.argv[2], 'wb').write(out)
            sys.exit(0)
        at = data.find(magic, at + 1)
sys.exit(1)
PY
}

# a stock kernel of one line (or exact version) in the cache; sets $dir
stock() {
  local line=$1 pkg vmlinuz kver
  pkg=$(newest "$line")
  if [ -z "$pkg" ]; then
    log "apt knows no linux-image package for the $line line (run apt-get update)"; exit 3
  fi
  dir=$CACHE/${pkg#linux-image-}
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir" "$dir.dl"; mkdir -p "$dir.dl"
    log "downloading $pkg"
    if ! (cd "$dir.dl" && apt-get download "$pkg" >/dev/null 2>"$dir.dl/apt.err"); then
      log "apt-get download $pkg failed: $(tail -1 "$dir.dl/apt.err")"; exit 3
    fi
    dpkg -x "$dir.dl"/*.deb "$dir"
    rm -rf "$dir.dl"
    vmlinuz=$(ls "$dir"/boot/vmlinuz-* | head -1)
    kver=${vmlinuz##*/vmlinuz-}
    if unpack_vmlinux "$vmlinuz" "$dir/boot/vmlinux-$kver" &&
       readelf -n "$dir/boot/vmlinux-$kver" 2>/dev/null | grep -q 'note type: (0x00000012)'; then
      :  # has the Xen/PVH ELF note (0x12): QEMU boots it directly
    else
      rm -f "$dir/boot/vmlinux-$kver"; log "$pkg: no PVH vmlinux, booting the bzImage (slower)"
    fi
    touch "$dir/.complete"
  fi
}

lines=("$@")
[ ${#lines[@]} -gt 0 ] || lines=(6.1 6.12 6.1-bug 6.1-fixed)
for line in "${lines[@]}"; do
  case $line in
    *-bug|*-fixed)
      # an incident kernel: the base line's kernel with kvm.ko/kvm-amd.ko rebuilt (incident.sh)
      base=${line%-*} variant=${line##*-}
      stock "$base"
      rc=0
      "$REPO/scripts/kernels/incident.sh" "$dir" "$variant" "$dir-$variant" || rc=$?
      [ $rc = 0 ] || { log "$line: incident.sh failed (exit $rc, the reason is above)"; exit $rc; }
      dir=$dir-$variant ;;
    *) stock "$line" ;;
  esac
  echo "$line $dir"
done
