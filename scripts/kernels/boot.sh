#!/bin/bash
# boot.sh - run ONE command on another Linux kernel: an extracted Debian linux-image (fetch.sh)
# booted under qemu-system-x86_64 (TCG), the host's / shared read-only over virtio-9p and used as
# the guest's root (chroot), so the host's node, build and tests run there unchanged.
#
# usage: boot.sh -k KDIR [-m MODULE]... [-e VAR=VALUE]... [-w HOSTDIR] [options] -- command [args]
#   -k KDIR     kernel tree from fetch.sh (KDIR/boot/vmlinu[xz]-<ver>, KDIR/lib/modules/<ver>)
#   -m MODULE   load MODULE (e.g. kvm_amd) and its dependencies in the guest; repeatable
#   -e VAR=VAL  environment for the command; repeatable
#   -w HOSTDIR  share HOSTDIR read-write at the same path (everything else is read-only)
#   -t SEC      timeout for the whole boot (default 600)   -M MEM  guest RAM (default 2G)
#   -s N        vCPUs (default 2)                            -v      print the guest console
# The command's stdout and stderr stream to our stdout (second serial port); it runs with cwd =
# our cwd, HOME=/root, writable tmpfs on /tmp, /run, /dev/shm, and tracefs, debugfs, bpffs,
# cgroup2 mounted. Exit code: the command's; 124 = timeout; 125 = the guest failed before or
# around the command (the reason is printed on stderr).
# Needs: qemu-system-x86_64, busybox (static), cpio, python3.
set -uo pipefail
KDIR="" MEM=2G SMP=2 TMO=600 VERBOSE=0
MODS=() ENVS=() RW=()
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
while getopts "k:m:e:w:t:M:s:vh" o; do
  case $o in
    k) KDIR=$OPTARG ;; m) MODS+=("$OPTARG") ;; e) ENVS+=("$OPTARG") ;;
    w) RW+=("$(realpath "$OPTARG")") ;; t) TMO=$OPTARG ;; M) MEM=$OPTARG ;; s) SMP=$OPTARG ;;
    v) VERBOSE=1 ;; *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ -n "$KDIR" ] && [ $# -ge 1 ] || usage
fail() { echo "boot: $*" >&2; exit 125; }

BUSYBOX=$(command -v busybox || true)
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 missing: apt-get install -y --no-install-recommends qemu-system-x86"
# the initramfs has no libc: busybox must be the static build
[ -n "$BUSYBOX" ] && [[ $(ldd "$BUSYBOX" 2>&1) == *"not a dynamic"* ]] || fail "a static busybox is needed: apt-get install -y busybox-static"
command -v cpio >/dev/null || fail "cpio missing: apt-get install -y cpio"

VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* 2>/dev/null | head -1)
[ -n "$VMLINUZ" ] || fail "no kernel in $KDIR (run scripts/kernels/fetch.sh)"
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR=$KDIR/lib/modules/$KVER
KIMG=$KDIR/boot/vmlinux-$KVER   # the PVH-bootable ELF fetch.sh unpacked; else the bzImage
[ -f "$KIMG" ] || KIMG=$VMLINUZ

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvmfault-boot.XXXXXX") || fail "mktemp"
QPID=""
cleanup() {
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ROOT=$WORK/initramfs
mkdir -p "$ROOT"/{bin,dev,proc,sys,host,mods}
cp "$BUSYBOX" "$ROOT/bin/busybox"

# Modules: resolve `depends=` from each module's .modinfo (no depmod output ships in the .deb),
# decompress into the initramfs in load order. Built-in modules (modules.builtin) are skipped.
python3 - "$MODDIR" "$ROOT/mods" virtio_pci 9pnet_virtio 9p "${MODS[@]}" <<'PY' || fail "module resolution failed"
import lzma, os, sys, subprocess
moddir, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
norm = lambda n: n.replace('-', '_')
paths = {}
for d, _, files in os.walk(os.path.join(moddir, 'kernel')):
    for f in files:
        for ext in ('.ko', '.ko.xz', '.ko.zst'):
            if f.endswith(ext):
                paths[norm(f[:-len(ext)])] = os.path.join(d, f)
builtin = set()
try:
    for line in open(os.path.join(moddir, 'modules.builtin')):
        builtin.add(norm(os.path.basename(line.strip()).rsplit('.ko', 1)[0]))
except OSError:
    pass
def content(p):
    raw = open(p, 'rb').read()
    if p.endswith('.xz'):
        return lzma.decompress(raw)
    if p.endswith('.zst'):
        return subprocess.run(['zstd', '-dcq'], input=raw, capture_output=True, check=True).stdout
    return raw
order, seen = [], set()
def add(name):
    name = norm(name)
    if name in seen:
        return
    seen.add(name)
    if name not in paths:
        if name in builtin:
            return
        sys.exit(f'boot: module {name} is neither in {moddir} nor built in')
    data = content(paths[name])
    for field in data.split(b'\0'):
        if field.startswith(b'depends='):
            for dep in filter(None, field[8:].decode().split(',')):
                add(dep)
            break
    order.append((name, data))
for w in wanted:
    add(w)
for i, (name, data) in enumerate(order):
    open(os.path.join(out, f'{i:02d}-{name}.ko'), 'wb').write(data)
print('boot: modules ' + ' '.join(n for n, _ in order), file=sys.stderr)
PY

# The command, quoted for bash, run from our cwd with the given environment.
{
  printf 'cd %q 2>/dev/null || cd /\n' "$PWD"
  for e in "${ENVS[@]}"; do printf 'export %q\n' "$e"; done
  printf 'exec'; printf ' %q' "$@"; echo
} > "$ROOT/cmd.sh"
: > "$ROOT/shares"
for i in "${!RW[@]}"; do echo "rw$i ${RW[$i]}" >> "$ROOT/shares"; done

cat > "$ROOT/init" <<'EOF_INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
say() { echo "boot: $*"; }
die() { say "GUEST FAILED: $*"; echo "@@KVMFAULT_RC=125"; sync; poweroff -f; }
say "kernel $(uname -r) up at $(cut -d' ' -f1 /proc/uptime)s"
for m in /mods/*.ko; do
  [ -e "$m" ] || continue
  insmod "$m" || say "insmod ${m#/mods/} failed"
done
H=/host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 hostroot $H || die "mount of the host root over 9p"
mount -t proc proc $H/proc; mount -t sysfs sys $H/sys; mount -t devtmpfs dev $H/dev
mkdir -p $H/dev/pts $H/dev/shm 2>/dev/null
mount -t devpts devpts $H/dev/pts; mount -t tmpfs tmpfs $H/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $H/tmp; mount -t tmpfs tmpfs $H/run
mount -t tracefs tracefs $H/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $H/sys/kernel/debug 2>/dev/null
mount -t bpf bpf $H/sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 $H/sys/fs/cgroup 2>/dev/null
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up 2>/dev/null || say "loopback not up: 127.0.0.1 unreachable"
while read tag dir; do
  mkdir -p "$H$dir" 2>/dev/null  # a share under /tmp needs its path inside the tmpfs
  mount -t 9p -o trans=virtio,version=9p2000.L,rw,cache=none,msize=524288 $tag "$H$dir" || die "mount of $dir"
done < /shares
cp /cmd.sh $H/tmp/.kvmfault-cmd.sh
stty -F /dev/ttyS1 raw -echo 2>/dev/null
say "command starts at $(cut -d' ' -f1 /proc/uptime)s"
chroot $H /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root TERM=dumb /bin/bash /tmp/.kvmfault-cmd.sh > /dev/ttyS1 2>&1 < /dev/null
rc=$?
say "command ended at $(cut -d' ' -f1 /proc/uptime)s with exit code $rc"
echo "@@KVMFAULT_RC=$rc"
sync
poweroff -f
EOF_INIT
chmod +x "$ROOT/init"
(cd "$ROOT" && find . | cpio -o -H newc --quiet) > "$WORK/initrd" || fail "cpio"

# thread=single: one host thread runs both guest vCPUs in turn. With multi-threaded TCG, the
# kernel's live code patching (text_poke_bp's int3: jump labels, fentry trampolines, kprobes)
# sometimes left a stale int3 that another vCPU then hit: "Oops: int3" in __schedule and at
# kvm_faultin_pfn+0x1 (fentry attach), a NULL RIP in direct_page_fault under kprobes, 3 of 3
# host-suite runs and 2 incident runs.
QARGS=(-machine q35 -accel tcg,thread=single -cpu max -m "$MEM" -smp "$SMP" -display none -no-reboot -nic none
  -serial "file:$WORK/console" -serial stdio
  -kernel "$KIMG" -initrd "$WORK/initrd"
  -append "console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init"
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
for i in "${!RW[@]}"; do
  QARGS+=(-virtfs "local,path=${RW[$i]},mount_tag=rw$i,security_model=none,multidevs=remap")
done

t0=$(date +%s.%N)
# qemu in the background so a signal to us ends it too (the EXIT trap kills $QPID)
timeout "$TMO" qemu-system-x86_64 "${QARGS[@]}" < /dev/null 2> "$WORK/qemu.err" &
QPID=$!
wait $QPID
qrc=$?
QPID=""
t1=$(date +%s.%N)
rc=$(tr -d '\r' < "$WORK/console" | sed -n 's/^@@KVMFAULT_RC=\([0-9]*\)$/\1/p' | tail -1)
if [ $VERBOSE = 1 ] || [ -z "$rc" ] || [ "$rc" = 125 ]; then
  echo "----- guest console -----" >&2
  # a guest oops: its first lines (what faulted and where) scroll out of the tail; show them too
  tr -d '\r' < "$WORK/console" | grep -m1 -A40 -E 'BUG:|Oops|general protection|Kernel panic|watchdog: BUG' >&2 &&
    echo "----- (last lines) -----" >&2
  tr -d '\r' < "$WORK/console" | grep -v '^@@KVMFAULT_RC' | tail -60 >&2
  [ -s "$WORK/qemu.err" ] && { echo "----- qemu stderr -----" >&2; cat "$WORK/qemu.err" >&2; }
fi
tr -d '\r' < "$WORK/console" | grep '^boot: ' >&2
printf 'boot: %s: %.1f s wall, command exit code %s\n' "$KVER" "$(echo "$t1 - $t0" | bc -l 2>/dev/null || python3 -c "print($t1-$t0)")" "${rc:-none}" >&2
if [ -z "$rc" ]; then
  [ $qrc = 124 ] && { echo "boot: timeout after ${TMO}s" >&2; exit 124; }
  echo "boot: the guest ended without reporting an exit code (qemu exit $qrc)" >&2; exit 125
fi
exit "$rc"
