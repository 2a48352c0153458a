#!/bin/bash
# matrix.sh - `npm run test:kernels`: the kernel tests (test/kernels/*.kernel.ts, built to
# dist/test/kernels/*.kernel.js) on every kernel of the matrix, each booted under QEMU with nested
# KVM (kvm + kvm_amd on the emulated AMD CPU), where kprobes and fentry exist.
#
# usage: matrix.sh [line...]      lines: 6.1 6.12 6.1-bug 6.1-fixed (default: all; see fetch.sh)
# env:   KVMFAULT_TREE=<dir>      run the tests of another built checkout (default: this repo)
#        KVMFAULT_KERNEL_GREP=re  only the mocha tests matching re
#        KVMFAULT_KVM_TESTS=qemu  also run the host suite's tests that need /dev/kvm (every
#                                 dist/test/*.test.js that calls requireKvm, and the attach-mode
#                                 tests, which call traceSupport) on the newest line:
#                                 scripts/test sets it on a host without /dev/kvm
# Exit 0: every kernel passed; 1: a test failed, a guest broke, or the matrix could not run
# (QEMU, busybox-static or the kernel packages missing: scripts/setup installs them; the reason
# is printed: a matrix that cannot run is a failure, never a silent pass); 2: not built.
# Per-kernel logs and the measured facts (@@kernels JSON lines) go to .cache/kernels/results/.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TREE=${KVMFAULT_TREE:-$REPO}
HERE=$REPO/scripts/kernels
RESULTS=${KVMFAULT_KERNEL_CACHE:-$REPO/.cache/kernels}/results
t0=$(date +%s)
cannot_run() { echo "test:kernels: FAILED, could not run: $*" >&2; exit 1; }

# ---- tools (scripts/setup installs them) ---------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ $(ldd "$(command -v busybox || echo /nonexistent)" 2>&1) == *"not a dynamic"* ]] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v python3 >/dev/null || need+=(python3)
[ ${#need[@]} = 0 ] || cannot_run "missing ${need[*]}: run scripts/setup (or apt-get install -y --no-install-recommends ${need[*]})"

# ---- the build under test ------------------------------------------------------------------
shopt -s nullglob
tests=("$TREE"/dist/test/kernels/*.kernel.js)
[ ${#tests[@]} -gt 0 ] && [ -f "$TREE/build/Release/kvmfault.node" ] || {
  echo "test:kernels: $TREE is not built (no dist/test/kernels/*.kernel.js or build/Release/kvmfault.node): run npm run build" >&2
  exit 2
}

# ---- kernels --------------------------------------------------------------------------------
mkdir -p "$REPO/.cache"
kernels=$("$HERE/fetch.sh" "$@" 2> "$REPO/.cache/fetch-kernels.log")
frc=$?
cat "$REPO/.cache/fetch-kernels.log" >&2
[ $frc = 0 ] || cannot_run "the Debian kernel packages cannot be had here (fetch.sh exit $frc, see above)"

# the host suite's tests that need a guest, when this host has no /dev/kvm of its own
host_kvm_tests=()
if [ "${KVMFAULT_KVM_TESTS:-}" = qemu ]; then
  # ... and the attach-mode tests (they call traceSupport()): here they meet kprobes and fentry
  for f in "$TREE"/dist/test/*.test.js; do
    grep -q -e 'requireKvm)(this)' -e 'traceSupport)()' "$f" && host_kvm_tests+=("${f#"$TREE"/}")
  done
  [ ${#host_kvm_tests[@]} -gt 0 ] || cannot_run "KVMFAULT_KVM_TESTS=qemu but no test in $TREE/dist/test calls requireKvm"
fi
# the newest distribution kernel (the incident variants come after it in the default order)
last_line=$(grep -Ev -- '-(bug|fixed) ' <<< "$kernels" | tail -1 | cut -d' ' -f1)

# the tests of one line: incident variants (6.1-bug, 6.1-fixed) run *.incident.kernel.js, the
# distribution kernels every other kernel test
tests_for() {
  local f
  for f in "${tests[@]#"$TREE"/}"; do
    case "$1:$f" in
      *-bug:*.incident.kernel.js|*-fixed:*.incident.kernel.js) echo "$f" ;;
      *-bug:*|*-fixed:*|*:*.incident.kernel.js) ;;
      *) echo "$f" ;;
    esac
  done
}

# boot one kernel and run mocha on some test files; $1 label, $2 kernel dir, $3 line, rest: files
run_on_kernel() {
  local label=$1 kdir=$2 line=$3; shift 3
  local grep_args=() share=() k0 rc secs tmo=1200
  # the host suite under TCG: ~15-20 min (node alone takes seconds to start there)
  [[ $label == *-host-suite ]] && tmo=2700
  [ -n "${KVMFAULT_KERNEL_GREP:-}" ] && grep_args=(--grep "$KVMFAULT_KERNEL_GREP")
  echo "=== $label ==="
  k0=$(date +%s)
  # a tree under /tmp would be hidden by the guest's tmpfs on /tmp: share it explicitly
  case "$(realpath "$TREE")" in /tmp/*) share=(-w "$TREE") ;; esac
  local attempt note=""
  for attempt in 1 2; do
    # kvm-keeper.py: one VM held for the whole run, so KVM never live-patches __schedule (see it)
    (cd "$TREE" && "$HERE/boot.sh" -k "$kdir" -m kvm_amd -t "$tmo" "${share[@]}" -e "KVMFAULT_KERNEL_LINE=$line" -- \
       bash -c 'python3 "$0" & exec "$@"' "$HERE/kvm-keeper.py" \
       node --expose-gc node_modules/mocha/bin/mocha.js --no-config --reporter spec --timeout 120000 "${grep_args[@]}" \
       "$@") > "$RESULTS/$label.log" 2>&1
    rc=$?
    grep '^@@kernels ' "$RESULTS/$label.log" | sed 's/^@@kernels //' > "$RESULTS/$label.jsonl"
    grep -v '^@@kernels ' "$RESULTS/$label.log"
    # 125: the guest kernel died under the emulator (seen: an int3 oops in __schedule while a
    # jump label was patched, 6.12 under TCG), not a test verdict: kept, said, and run once more
    [ $rc = 125 ] && [ $attempt = 1 ] || break
    cp "$RESULTS/$label.log" "$RESULTS/$label.guest-crash.log"
    note=" after a guest crash (kept in ${RESULTS#"$REPO"/}/$label.guest-crash.log)"
    echo "test:kernels: $label: the guest kernel crashed (exit 125), not a test failure: running it once more"
  done
  secs=$(( $(date +%s) - k0 ))
  if [ $rc = 0 ]; then summary+=("PASS $label (${secs}s)$note"); else failed+=("$label"); summary+=("FAIL $label (exit $rc, ${secs}s)$note"); fi
}

mkdir -p "$RESULTS"
failed=() summary=()
while read -r line kdir; do
  [ -n "$kdir" ] || continue
  ver=$(basename "$kdir")
  ls "$kdir"/lib/modules/*/kernel/arch/x86/kvm/kvm-amd.ko* >/dev/null 2>&1 || cannot_run "$ver has no kvm-amd module"
  mapfile -t line_tests < <(tests_for "$line")
  if [ ${#line_tests[@]} -gt 0 ]; then run_on_kernel "$ver" "$kdir" "$line" "${line_tests[@]}"; fi
  if [ ${#host_kvm_tests[@]} -gt 0 ] && [ "$line" = "$last_line" ]; then
    run_on_kernel "$ver-host-suite" "$kdir" "$line" "${host_kvm_tests[@]}"
  fi
done <<< "$kernels"

echo "=== kernel matrix: $(( $(date +%s) - t0 ))s wall ==="
printf '  %s\n' "${summary[@]}"
echo "  logs and measured facts: ${RESULTS#"$REPO"/}/<kernel>.log / .jsonl"
[ ${#failed[@]} = 0 ] || exit 1
