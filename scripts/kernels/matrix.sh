#!/bin/bash
# matrix.sh - `npm run test:kernels`: the kernel tests (test/kernels/*.kernel.ts, built to
# dist/test/kernels/*.kernel.js) on every kernel of the matrix, each booted under QEMU with nested
# KVM (kvm + kvm_amd on the emulated AMD CPU), where kprobes and fentry exist.
#
# usage: matrix.sh [line...]      lines: 6.1 6.12 (default: both; see fetch.sh)
# env:   KVMFAULT_TREE=<dir>      run the tests of another built checkout (default: this repo)
#        KVMFAULT_KERNEL_GREP=re  only the mocha tests matching re
# Exit 0: every kernel passed, or "not run: <reason>" when QEMU or the kernels/kvm modules
# cannot be had here (printed, never silent); 1: a test failed or a guest broke; 2: not built.
# Per-kernel logs and the measured facts (@@kernels JSON lines) go to .cache/kernels/results/.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TREE=${KVMFAULT_TREE:-$REPO}
HERE=$REPO/scripts/kernels
RESULTS=${KVMFAULT_KERNEL_CACHE:-$REPO/.cache/kernels}/results
t0=$(date +%s)
not_run() { echo "test:kernels: not run: $*"; exit 0; }

# ---- tools: install QEMU & co. from Debian when missing ------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86 qemu-utils)
[[ $(ldd "$(command -v busybox || echo /nonexistent)" 2>&1) == *"not a dynamic"* ]] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || not_run "missing ${need[*]} and not root to install them"
  echo "test:kernels: installing ${need[*]}"
  { apt-get install -y --no-install-recommends "${need[@]}" || { apt-get update && apt-get install -y --no-install-recommends "${need[@]}"; }; } \
    > "$REPO/.cache/apt-kernels.log" 2>&1 || not_run "apt-get install ${need[*]} failed (see .cache/apt-kernels.log)"
fi
command -v python3 >/dev/null || not_run "python3 missing (boot.sh unpacks the kernel with it)"

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
[ $frc = 0 ] || not_run "the Debian kernel packages cannot be downloaded here (fetch.sh exit $frc, see above)"

mkdir -p "$RESULTS"
failed=() summary=()
while read -r line kdir; do
  [ -n "$kdir" ] || continue
  ver=$(basename "$kdir")
  if ! ls "$kdir"/lib/modules/*/kernel/arch/x86/kvm/kvm-amd.ko* >/dev/null 2>&1; then
    not_run "$ver has no kvm-amd module"
  fi
  echo "=== $line: $ver ==="
  grep_args=()
  [ -n "${KVMFAULT_KERNEL_GREP:-}" ] && grep_args=(--grep "$KVMFAULT_KERNEL_GREP")
  k0=$(date +%s)
  # a tree under /tmp would be hidden by the guest's tmpfs on /tmp: share it explicitly
  share=()
  case "$(realpath "$TREE")" in /tmp/*) share=(-w "$TREE") ;; esac
  (cd "$TREE" && "$HERE/boot.sh" -k "$kdir" -m kvm_amd -t 900 "${share[@]}" -- \
     node node_modules/mocha/bin/mocha.js --no-config --reporter spec --timeout 120000 "${grep_args[@]}" \
     "${tests[@]#"$TREE"/}") > "$RESULTS/$ver.log" 2>&1
  rc=$?
  grep '^@@kernels ' "$RESULTS/$ver.log" | sed 's/^@@kernels //' > "$RESULTS/$ver.jsonl"
  grep -v '^@@kernels ' "$RESULTS/$ver.log"
  secs=$(( $(date +%s) - k0 ))
  if [ $rc = 0 ]; then summary+=("PASS $ver (${secs}s)"); else failed+=("$ver"); summary+=("FAIL $ver (exit $rc, ${secs}s)"); fi
done <<< "$kernels"

echo "=== kernel matrix: $(( $(date +%s) - t0 ))s wall ==="
printf '  %s\n' "${summary[@]}"
echo "  logs and measured facts: ${RESULTS#"$REPO"/}/<kernel>.log / .jsonl"
[ ${#failed[@]} = 0 ] || exit 1
