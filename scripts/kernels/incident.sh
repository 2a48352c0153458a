#!/bin/bash
# incident.sh - a Debian 6.1 kernel tree (as fetch.sh extracts it) whose kvm.ko and kvm-amd.ko are
# rebuilt from the same Debian source with the incident's edits (incident-patch.py):
#   bug    is_page_fault_stale() takes `int mmu_seq` again (the v5.16..v6.2 sign-extension bug)
#   fixed  today's code
# Both have the module parameter kvm.initial_invalidate_seq (0644): new VMs start their
# mmu_invalidate_seq there, so 0x80000000 is a few invalidations away instead of 2^31.
#
# usage: incident.sh KDIR VARIANT OUT     (fetch.sh calls it for the lines 6.1-bug / 6.1-fixed)
# OUT becomes a hard-linked copy of KDIR with the two modules replaced; everything else is the
# stock Debian kernel. Nothing is installed: linux-source-6.1, linux-headers and linux-kbuild of
# the kernel's exact Debian version are `apt-get download`ed and `dpkg -x`ed into
#   $KVMFAULT_KERNEL_CACHE/incident-src/<version>/   (default <repo>/.cache/kernels; ~300 MB)
# and kept, with the pristine KVM sources, so later builds skip the download. OUT carries a stamp
# (variant, version, hash of this script and the patch script): a second run with nothing
# changed only checks it. Build log: incident-src/<version>/build-<variant>.log.
# Needs: apt-get, dpkg-deb, tar, xz, make, python3, the kernel's own compiler (gcc-12 for
# Debian 12's 6.1) and pahole (dwarves) for the module BTF.
# Exit 0 ok (prints "OUT: ..." on stderr), 2 usage, 3 packages not to be had, 4 a tool missing,
# 5 the source edit or the build failed. Every failure says why on stderr.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
log() { echo "incident: $*" >&2; }
die() { local rc=$1; shift; log "$*"; exit "$rc"; }

[ $# = 3 ] || die 2 "usage: incident.sh KDIR bug|fixed OUT"
KDIR=$(realpath "$1") VARIANT=$2 OUT=$3
case $VARIANT in bug|fixed) ;; *) die 2 "variant must be bug or fixed, not '$VARIANT'" ;; esac
CACHE=${KVMFAULT_KERNEL_CACHE:-$REPO/.cache/kernels}
PATCH=$HERE/incident-patch.py

# ---- the kernel: release, Debian source version, compiler --------------------------------------
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* 2>/dev/null | head -1) || true
[ -n "$VMLINUZ" ] || die 2 "$KDIR is not a kernel tree from fetch.sh (no boot/vmlinuz-*)"
KVER=${VMLINUZ##*/vmlinuz-}      # 6.1.0-57-amd64
ABI=${KVER%-amd64}               # 6.1.0-57
case $KVER in 6.1.0-*-amd64) ;; *) die 2 "$KVER: the incident edits are written for Debian's 6.1 line (6.1.0-N-amd64) only" ;; esac
CONFIG=$KDIR/boot/config-$KVER
[ -f "$CONFIG" ] || die 2 "no $CONFIG"
# the exact Debian version is in the kernel's banner: "... Debian 6.1.192-3 (2026-11-26)"
banner() {
  if [ -f "$KDIR/boot/vmlinux-$KVER" ]; then grep -aom1 'SMP PREEMPT_DYNAMIC Debian [^ ]*' "$KDIR/boot/vmlinux-$KVER"; fi
  zcat "$KDIR/usr/share/doc/linux-image-$KVER/changelog.gz" 2>/dev/null | grep -om1 'Sign kernel from linux [^ ]*'
}
VER=$(banner | head -1 | awk '{print $NF}') || true
[ -n "$VER" ] || die 2 "cannot tell the Debian version of $KVER (no banner in boot/vmlinux-$KVER, no signed changelog)"
CC=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\([^ ]*\) .*/\1/p' "$CONFIG")   # gcc-12
[ -n "$CC" ] || die 2 "no CONFIG_CC_VERSION_TEXT in $CONFIG"

# ---- already built? ---------------------------------------------------------------------------
STAMP="variant=$VARIANT version=$VER kver=$KVER scripts=$(cat "$0" "$PATCH" | sha256sum | cut -c1-16)"
MODS=lib/modules/$KVER/kernel/arch/x86/kvm
if [ -f "$OUT/.incident" ] && [ "$(cat "$OUT/.incident")" = "$STAMP" ] &&
   [ -f "$OUT/$MODS/kvm.ko" ] && [ -f "$OUT/$MODS/kvm-amd.ko" ]; then
  log "$OUT: cached ($STAMP)"
  exit 0
fi

# ---- tools ------------------------------------------------------------------------------------
missing=()
for t in apt-get dpkg-deb tar xz make python3 "$CC" pahole; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sed 's/^pahole$/dwarves/; s/^xz$/xz-utils/; s/^dpkg-deb$/dpkg/; s/^apt-get$/apt/' | sort -u | tr '\n' ' ')
  die 4 "missing ${missing[*]}: apt-get install -y --no-install-recommends ${pkgs% }"
fi

# ---- the Debian packages, downloaded and extracted once per version ----------------------------
SRCCACHE=$CACHE/incident-src/$VER
ROOT=$SRCCACHE/root
PKGS=("linux-source-6.1=$VER" "linux-headers-$KVER=$VER" "linux-headers-$ABI-common=$VER" "linux-kbuild-6.1=$VER")
if [ ! -f "$SRCCACHE/.extracted" ]; then
  rm -rf "$SRCCACHE" && mkdir -p "$SRCCACHE/dl"
  log "downloading ${PKGS[*]} (~160 MB, once)"
  (cd "$SRCCACHE/dl" && apt-get download "${PKGS[@]}" >/dev/null 2> "$SRCCACHE/apt.err") ||
    die 3 "apt-get download failed: $(grep -v '^W:' "$SRCCACHE/apt.err" | tail -2 | tr '\n' ' ')(run apt-get update; is $VER still in the archive?)"
  for deb in "$SRCCACHE"/dl/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
  rm -rf "$SRCCACHE/dl"
  # the two source directories KVM is built from, unpacked once (the tarball is 140 MB of xz)
  log "unpacking arch/x86/kvm and virt/kvm from linux-source-6.1.tar.xz"
  mkdir -p "$SRCCACHE/pristine"
  tar -xJf "$ROOT/usr/src/linux-source-6.1.tar.xz" -C "$SRCCACHE/pristine" --strip-components=1 \
    --wildcards 'linux-source-6.1/arch/x86/kvm/*' 'linux-source-6.1/virt/kvm/*' ||
    die 5 "linux-source-6.1.tar.xz has no arch/x86/kvm, virt/kvm"
  rm -f "$ROOT/usr/src/linux-source-6.1.tar.xz"   # only the two directories are needed
  touch "$SRCCACHE/.extracted"
fi

# ---- the build tree: Debian's headers for this kernel, pointed into our extraction -------------
HDR=$ROOT/usr/src/linux-headers-$KVER
COMMON=$ROOT/usr/src/linux-headers-$ABI-common
KBUILD=$ROOT/usr/lib/linux-kbuild-6.1
[ -d "$HDR" ] && [ -d "$COMMON" ] && [ -d "$KBUILD" ] || die 5 "the extracted packages lack $HDR, $COMMON or $KBUILD"
# the arch headers' Makefile includes the common one by its installed path (/usr/src/...)
echo "include $COMMON/Makefile" > "$HDR/Makefile"
# the arch headers' scripts and tools are symlinks to /usr/lib/linux-kbuild-6.1: point them here
for l in "$HDR"/scripts "$HDR"/tools "$COMMON"/scripts "$COMMON"/tools; do
  if [ -L "$l" ]; then ln -sfn "$KBUILD/$(basename "$l")" "$l"; fi
done
# module BTF is split BTF on top of the kernel's own vmlinux (fetch.sh unpacked it from vmlinuz)
[ -f "$KDIR/boot/vmlinux-$KVER" ] || die 5 "no $KDIR/boot/vmlinux-$KVER: module BTF needs the ELF vmlinux (fetch.sh unpacks it)"
ln -f "$KDIR/boot/vmlinux-$KVER" "$HDR/vmlinux" 2>/dev/null || cp "$KDIR/boot/vmlinux-$KVER" "$HDR/vmlinux"
# linux-kbuild ships no resolve_btfids; KVM declares no BTF_ID sets, so there is nothing to resolve
RB=$KBUILD/tools/bpf/resolve_btfids/resolve_btfids
if [ ! -x "$RB" ]; then mkdir -p "$(dirname "$RB")" && printf '#!/bin/sh\nexit 0\n' > "$RB" && chmod +x "$RB"; fi

# ---- edit and build ---------------------------------------------------------------------------
SRC=$SRCCACHE/build-$VARIANT
BLOG=$SRCCACHE/build-$VARIANT.log
rm -rf "$SRC" && mkdir -p "$SRC" && cp -a "$SRCCACHE/pristine/." "$SRC/"
python3 "$PATCH" "$SRC" "$VARIANT" >&2 || die 5 "incident-patch.py $VARIANT failed on Debian $VER's source (see above)"
K=$SRC/arch/x86/kvm
# built out of tree: Makefile.kvm is included via $(srctree), trace.h's TRACE_INCLUDE_PATH is
# relative to include/trace (an empty directory next to arch/ makes ../../arch/x86/kvm resolve)
sed -i 's|include $(srctree)/virt/kvm/Makefile.kvm|include $(src)/../../../virt/kvm/Makefile.kvm|' "$K/Makefile"
grep -q 'src)/../../../virt/kvm/Makefile.kvm' "$K/Makefile" || die 5 "arch/x86/kvm/Makefile no longer includes virt/kvm/Makefile.kvm as expected"
mkdir -p "$SRC/include/trace"
log "building kvm.ko + kvm-amd.ko ($VARIANT, Debian $VER, $CC, $(nproc) jobs)"
b0=$(date +%s)
if ! make -C "$HDR" M="$K" CC="$CC" CONFIG_KVM=m CONFIG_KVM_AMD=m CONFIG_KVM_INTEL= \
     KCFLAGS="-I$K -I$SRC/include/trace" -j"$(nproc)" modules > "$BLOG" 2>&1; then
  tail -25 "$BLOG" >&2
  die 5 "the module build failed (log: $BLOG)"
fi
for m in kvm kvm-amd; do
  [ -f "$K/$m.ko" ] || die 5 "the build made no $m.ko (log: $BLOG)"
  # without .BTF the tracer's fentry/tp_btf modes and the BTF checks have nothing to read
  readelf -S "$K/$m.ko" | grep -q ' \.BTF ' || die 5 "$m.ko has no .BTF section: pahole failed? (log: $BLOG)"
done
log "built in $(( $(date +%s) - b0 ))s"

# ---- OUT: the stock tree, hard-linked, with the two modules replaced ----------------------------
rm -rf "$OUT" "$OUT.tmp"
cp -al "$KDIR" "$OUT.tmp"
rm -f "$OUT.tmp/.complete" "$OUT.tmp/$MODS"/kvm.ko* "$OUT.tmp/$MODS"/kvm-amd.ko*
cp "$K/kvm.ko" "$K/kvm-amd.ko" "$OUT.tmp/$MODS/"
echo "$STAMP" > "$OUT.tmp/.incident"
mv "$OUT.tmp" "$OUT"
log "$OUT: $KVER with kvm.ko + kvm-amd.ko rebuilt ($VARIANT)"
