#!/bin/bash
# soak.sh - the long run (issue 12; not in CI): the built-in guest at its maximum fault rate with
# concurrent invalidations for DURATION seconds, `kvmfault watch --json` and `kvmfault record`
# attached at once. Every INTERVAL s it prints both tracers' RSS; at the end one JSON line with
# the RSS first/last/max, records and drops of each, and the capture read back by `analyze`.
#
# usage: scripts/soak.sh [-d SECONDS (3600)] [-i INTERVAL (60)] [-o DIR (.cache/soak)]
# Needs root, BTF and /dev/kvm. On a host without /dev/kvm run it in the matrix's 6.12 kernel:
#   scripts/kernels/boot.sh -k .cache/kernels/6.12.* -m kvm_amd -t 4200 -w .cache/soak -- \
#     scripts/soak.sh -o .cache/soak
set -uo pipefail
DURATION=3600 INTERVAL=60 OUT=.cache/soak
while getopts "d:i:o:h" o; do
  case $o in d) DURATION=$OPTARG ;; i) INTERVAL=$OPTARG ;; o) OUT=$OPTARG ;; *) sed -n '2,12p' "$0"; exit 2 ;; esac
done
cd "$(dirname "$0")/.." || exit 2
[ -w /dev/kvm ] || { echo "soak: needs read/write /dev/kvm (run it as root on a KVM host, or under boot.sh as above)" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
CLI=(node dist/lib/cli/main.js)
CAP=$OUT/soak.kvmf
t0=$(date +%s)

# tracers first (they attach in ~1 s), then the guest, which runs longest
"${CLI[@]}" watch --json --duration "$((DURATION + 20))" > "$OUT/watch.jsonl" 2> "$OUT/watch.err" & WATCH=$!
"${CLI[@]}" record -o "$CAP" --duration "$((DURATION + 20))" --max-bytes 30G -q 2> "$OUT/record.err" & RECORD=$!
sleep 5
"${CLI[@]}" workload --invalidate concurrent --duration "$DURATION" --json > "$OUT/workload.json" 2> "$OUT/workload.err" & WORKLOAD=$!
trap 'kill $WATCH $RECORD $WORKLOAD 2>/dev/null; exit 130' INT TERM

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
samples=$OUT/rss.tsv
printf 't_s\twatch_rss_kib\trecord_rss_kib\tcapture_bytes\n' > "$samples"
while kill -0 "$WORKLOAD" 2>/dev/null; do
  printf '%s\t%s\t%s\t%s\n' "$(( $(date +%s) - t0 ))" "$(rss $WATCH)" "$(rss $RECORD)" "$(stat -c %s "$CAP" 2>/dev/null || echo 0)" | tee -a "$samples"
  sleep "$INTERVAL" & wait $! 2>/dev/null
done
wait "$WORKLOAD"; workload_rc=$?
wait "$WATCH"; watch_rc=$?
wait "$RECORD"; record_rc=$?

"${CLI[@]}" analyze --json "$CAP" > "$OUT/analyze.json" 2> "$OUT/analyze.err"; analyze_rc=$?
python3 - "$OUT" "$workload_rc" "$watch_rc" "$record_rc" "$analyze_rc" "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys, re
out, wl_rc, w_rc, r_rc, a_rc, secs = sys.argv[1], *map(int, sys.argv[2:])
rows = [l.split('\t') for l in open(f'{out}/rss.tsv').read().split('\n')[1:] if l]
col = lambda i: [int(r[i]) for r in rows if int(r[i]) > 0]
final = [json.loads(l) for l in open(f'{out}/watch.jsonl') if '"final"' in l]
rec = open(f'{out}/record.err').read()
m = re.search(r'(\d+) records, .*?; (\d+) dropped', rec)
an = json.load(open(f'{out}/analyze.json')) if a_rc in (0, 1) else {}
try:
    wl = json.load(open(f'{out}/workload.json'))
except Exception:
    wl = {}
summary = {
    'seconds': secs, 'exit': {'workload': wl_rc, 'watch': w_rc, 'record': r_rc, 'analyze': a_rc},
    'kvm': {k: wl.get('total', {}).get(k) for k in ('faults', 'faultsPerSec', 'invalidations', 'pagesLost')},
    'watch': {'rssKiB': {'first': (col(1) or [0])[0], 'last': (col(1) or [0])[-1], 'max': max(col(1) or [0])},
              'records': final[-1]['records'] if final else None, 'dropped': final[-1]['dropped'] if final else None},
    'record': {'rssKiB': {'first': (col(2) or [0])[0], 'last': (col(2) or [0])[-1], 'max': max(col(2) or [0])},
               'records': int(m.group(1)) if m else None, 'dropped': int(m.group(2)) if m else None},
    'capture': {'records': an.get('records'), 'damage': len(an.get('capture', {}).get('damage', [])) if an else None,
                'complete': an.get('capture', {}).get('complete'), 'gaps': an.get('capture', {}).get('gaps'),
                'verdicts': sorted({v.get('state') for v in an.get('vcpus', [])})},
}
print('soak: ' + json.dumps(summary))
PY
