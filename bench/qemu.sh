#!/bin/bash
# qemu.sh - benchmarks that need KVM (bench/probe-cost.ts, bench/e2e.ts) inside the kernel
# matrix's guest, for a host without /dev/kvm (or without kprobes / fentry): ONE boot of the 6.12
# guest (QEMU TCG, nested SVM; every attach mode exists there), so what a goal compares (the KVM
# programs and the ringtest producer; faults with and without the tracer) runs on the same
# emulated CPU in the same boot. TCG inflates every figure; the ratios are what compare. Several
# built trees (e.g. a before and an after checkout) run one after the other in that boot.
#
# usage: bench/qemu.sh [-b BENCH]... [-r ROUNDS] [-k KDIR] [-t SEC] [TREE...] [-- bench flags]
#   -b BENCH  dist/bench/BENCH.js to run, repeatable (default: probe-cost)
#   -r N      probe-cost only: N rounds of --repeats 1 --json, the trees interleaved round by
#             round (load drift on a shared machine hits each alike), combined at the end into
#             per-tree medians of ns and of the per-round ratio to the ringtest producer
#   -k KDIR   kernel dir (default: .cache/kernels/6.12.*, see scripts/kernels/fetch.sh)
#   -t SEC    boot timeout (default 3000)
#   TREE      built checkouts to measure (default: this one); each runs its own dist/ and addon
#   flags     passed to every bench (default: --quick --repeats 3 --no-record, and --no-bpftrace
#             for probe-cost: a TCG-sized workload, 3 interleaved repeats; printed, not appended)
# Prints /proc/cpuinfo's model on the host and inside the guest, then each tree's tables.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
KDIR="" TMO=3000 ROUNDS=0 benches=()
while getopts "b:r:k:t:h" o; do
  case $o in
    b) benches+=("$OPTARG") ;; r) ROUNDS=$OPTARG ;; k) KDIR=$OPTARG ;; t) TMO=$OPTARG ;;
    *) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
# getopts eats a "--" that directly follows the options: then no TREE was given, only flags
ended_by_dashes=false
[ "$OPTIND" -gt 1 ] && [ "${@:OPTIND-1:1}" = -- ] && ended_by_dashes=true
shift $((OPTIND - 1))
[ ${#benches[@]} -gt 0 ] || benches=(probe-cost)
trees=()
if ! $ended_by_dashes; then
  while [ $# -gt 0 ] && [ "$1" != -- ]; do trees+=("$(realpath "$1")"); shift; done
  [ "${1:-}" = -- ] && shift
fi
[ ${#trees[@]} -gt 0 ] || trees=("$REPO")
[ -n "$KDIR" ] || KDIR=$(ls -d "$REPO"/.cache/kernels/6.12.* 2>/dev/null | grep -v -- '-bug$\|-fixed$' | head -1)
[ -d "$KDIR" ] || { echo "qemu.sh: no 6.12 kernel dir (run scripts/kernels/fetch.sh 6.12, or pass -k)" >&2; exit 2; }
for t in "${trees[@]}"; do
  for b in "${benches[@]}"; do
    [ -f "$t/dist/bench/$b.js" ] && [ -f "$t/build/Release/kvmfault.node" ] ||
      { echo "qemu.sh: $t has no dist/bench/$b.js or addon (npm run build)" >&2; exit 2; }
  done
done
echo "host CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($(nproc) cores, kernel $(uname -r))"
# in the guest: hold one VM for the whole run (kvm-keeper.py: no preempt-notifier key flips under
# TCG), then each tree and bench in turn; one that fails does not stop the others
guest_script='
python3 "$1" & shift
echo "guest CPU: $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed "s/^ //") ($(nproc) vCPUs, kernel $(uname -r))"
rc=0
rounds=$1; shift
nt=$1; shift; trees=("${@:1:$nt}"); shift "$nt"
nb=$1; shift; benches=("${@:1:$nb}"); shift "$nb"
if [ "$rounds" -gt 0 ]; then
  for r in $(seq 1 "$rounds"); do
    for t in "${trees[@]}"; do
      echo "round $r: $t" >&2
      out=$(cd "$t" && node dist/bench/probe-cost.js --quick --repeats 1 --no-record --no-bpftrace --json "$@") || rc=1
      echo "@@round $r $t $(tail -1 <<< "$out")"
    done
  done
  exit $rc
fi
for t in "${trees[@]}"; do
  for b in "${benches[@]}"; do
    flags=("$@")
    if [ ${#flags[@]} = 0 ]; then
      flags=(--quick --repeats 3 --no-record)
      [ "$b" = probe-cost ] && flags+=(--no-bpftrace)
    fi
    echo "=== $b: $t ($(git -C "$t" rev-parse --short HEAD 2>/dev/null)) ==="
    (cd "$t" && node "dist/bench/$b.js" "${flags[@]}") || rc=1
  done
done
exit $rc'
run() {
  "$REPO/scripts/kernels/boot.sh" -k "$KDIR" -m kvm_amd -t "$TMO" -- \
    bash -c "$guest_script" guest "$REPO/scripts/kernels/kvm-keeper.py" \
    "$ROUNDS" "${#trees[@]}" "${trees[@]}" "${#benches[@]}" "${benches[@]}" "$@"
}
[ "$ROUNDS" -gt 0 ] || { run "$@"; exit; }
for t in "${trees[@]}"; do echo "tree $t: $(git -C "$t" rev-parse --short HEAD 2>/dev/null)"; done
log=$(mktemp "${TMPDIR:-/tmp}/kvmfault-rounds.XXXXXX")
run "$@" | tee "$log" | grep -v '^@@round'
rc=${PIPESTATUS[0]}
node "$REPO/dist/bench/probe-cost.js" --combine "$log" || rc=1
rm -f "$log"
exit "$rc"
