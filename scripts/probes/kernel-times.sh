#!/bin/sh
# kernel-times.sh - GPU time of every kernel of a glm-bench workload, summed by kernel
# (ncu, each kernel isolated with caches flushed, clocks not locked): where a decode
# step or a prefill goes (docs/PERF.md, run 14). The synthetic weights' fill kernels
# are left out. Not part of the build or the tests.
#
#   make all
#   sh scripts/probes/kernel-times.sh -p 0 -n 4 -b 1        (six decode steps at batch 1)
#   sh scripts/probes/kernel-times.sh -p 2048 -n 0 -r 1     (a prefill and its warm-up)
#
# The arguments go to glm-bench after --synthetic glm-4.7 --layers 13 --fmt fp8ch.
set -u
out=${TMPDIR:-/tmp}/kernel-times.$$.txt
ncu --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel -k "regex:^(?!fill_)" \
    --launch-count ${GLM_NCU_LAUNCHES:-2000} \
    build/bin/glm-bench --synthetic glm-4.7 --layers 13 --fmt fp8ch --no-probe "$@" > "$out" 2>&1 ||
    { tail -n 20 "$out"; exit 1; }
python3 - "$out" <<'PY'
import re, sys
units = {'nsecond': 1e-3, 'ns': 1e-3, 'usecond': 1.0, 'us': 1.0, 'msecond': 1e3, 'ms': 1e3}
name, inv, rows = None, 0, []
for line in open(sys.argv[1]):
    m = re.match(r'^  (\S.*?) \(\d+, \d+, \d+\)x\(\d+, \d+, \d+\).*Invocations (\d+)', line)
    if m:
        name, inv = line.strip().split(', Device')[0][:110], int(m.group(2))
        continue
    m = re.match(r'\s+gpu__time_duration.sum\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)', line)
    if m and name:
        f = units.get(m.group(1), 1.0)
        lo, hi, avg = [float(v.replace(',', '')) * f for v in m.group(2, 3, 4)]
        rows.append((avg * inv, avg, lo, hi, inv, name))
        name = None
rows.sort(reverse=True)
print("total %.0f us over %d kernels" % (sum(r[0] for r in rows), sum(r[4] for r in rows)))
print("%9s %8s %19s %5s  %s" % ("total us", "avg us", "[min - max]", "calls", "kernel (grid)x(block)"))
for t, a, lo, hi, n, nm in rows:
    print("%9.0f %8.1f [%7.1f - %7.1f] %5d  %s" % (t, a, lo, hi, n, nm))
PY
rm -f "$out"
