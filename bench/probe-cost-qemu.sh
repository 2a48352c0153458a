#!/bin/bash
# probe-cost-qemu.sh - bench/probe-cost.ts inside the kernel matrix's guest, for a host without
# /dev/kvm (or without kprobes / fentry): ONE boot of the 6.12 guest (QEMU TCG, nested SVM; every
# attach mode exists there), so the KVM programs and the ringtest producer they are compared with
# run on the same (emulated) CPU in the same boot. TCG inflates every figure; the ratios are what
# compare. Several built trees (e.g. a before and an after checkout) run one after the other in
# that same boot.
#
# usage: bench/probe-cost-qemu.sh [-k KDIR] [-t SEC] [TREE...] [-- probe-cost flags]
#   -k KDIR  kernel dir (default: .cache/kernels/6.12.*, see scripts/kernels/fetch.sh)
#   -t SEC   boot timeout (default 3000)
#   TREE     built checkouts to measure (default: this one); each runs its own dist/ and addon
#   flags    passed to every dist/bench/probe-cost.js (default: --no-record --no-bpftrace
#            --quick --repeats 3: a TCG-sized workload, 3 interleaved repeats; printed, not appended)
# Prints /proc/cpuinfo's model inside the guest, then each tree's table.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
KDIR="" TMO=3000
while getopts "k:t:h" o; do
  case $o in
    k) KDIR=$OPTARG ;; t) TMO=$OPTARG ;;
    *) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
trees=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do trees+=("$(realpath "$1")"); shift; done
[ "${1:-}" = -- ] && shift
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(--quick --repeats 3 --no-record --no-bpftrace)
[ ${#trees[@]} -gt 0 ] || trees=("$REPO")
[ -n "$KDIR" ] || KDIR=$(ls -d "$REPO"/.cache/kernels/6.12.* 2>/dev/null | grep -v -- '-bug$\|-fixed$' | head -1)
[ -d "$KDIR" ] || { echo "probe-cost-qemu: no 6.12 kernel dir (run scripts/kernels/fetch.sh 6.12, or pass -k)" >&2; exit 2; }
for t in "${trees[@]}"; do
  [ -f "$t/dist/bench/probe-cost.js" ] && [ -f "$t/build/Release/kvmfault.node" ] ||
    { echo "probe-cost-qemu: $t is not built (npm run build)" >&2; exit 2; }
done
echo "host CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($(nproc) cores, kernel $(uname -r))"
# in the guest: hold one VM for the whole run (kvm-keeper.py: no preempt-notifier key flips under
# TCG), then each tree in turn; a tree that fails does not stop the others
guest_script='
python3 "$1" & shift
echo "guest CPU: $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed "s/^ //") ($(nproc) vCPUs, kernel $(uname -r))"
rc=0
n=$1; shift
trees=("${@:1:$n}"); shift "$n"
for t in "${trees[@]}"; do
  echo "=== $t ($(git -C "$t" rev-parse --short HEAD 2>/dev/null)) ==="
  (cd "$t" && node dist/bench/probe-cost.js "$@") || rc=1
done
exit $rc'
exec "$REPO/scripts/kernels/boot.sh" -k "$KDIR" -m kvm_amd -t "$TMO" -- \
  bash -c "$guest_script" guest "$REPO/scripts/kernels/kvm-keeper.py" "${#trees[@]}" "${trees[@]}" "${flags[@]}"
