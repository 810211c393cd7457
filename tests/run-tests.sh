#!/bin/sh
# Runs test binaries, sums their "N passed, N failed[, N skipped]" lines, and prints the
# total "N passed, N failed, N skipped" last; exits non-zero if any test failed, or a
# binary crashed, hung, exited non-zero or printed no summary (each counted as one
# failure), or GLM_TEST_ONLY was set and matched no test in any binary.
# env: GLM_TEST_TIMEOUT  seconds a binary may run (default 300; 0: no limit)
#      GLM_TEST_ONLY     a test name or shell pattern, passed on to every binary
limit=${GLM_TEST_TIMEOUT:-300}
case $limit in ''|*[!0-9]*) echo "GLM_TEST_TIMEOUT=$limit: not a number of seconds"; exit 2;; esac
run=""
if [ "$limit" -gt 0 ]; then
  if command -v timeout >/dev/null 2>&1; then run="timeout -k 10 $limit"
  else echo "(no 'timeout' command: binaries run without a time limit)"; fi
fi
total_p=0; total_f=0; total_s=0; status=0
for t in "$@"; do
  echo "== $t"
  t0=$(date +%s)
  out=$($run "$t" 2>&1); rc=$?
  printf '%s\n' "$out"
  echo "-- $t: exit $rc, $(( $(date +%s) - t0 )) s"
  if [ -n "$run" ] && { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; }; then
    echo "$t: FAILED: still running after ${limit} s (GLM_TEST_TIMEOUT=$limit), killed"
    total_f=$((total_f + 1)); status=1; continue
  fi
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' | tail -n 1)
  if [ -z "$line" ]; then
    echo "$t: FAILED: exited with status $rc without a summary line"
    total_f=$((total_f + 1)); status=1; continue
  fi
  p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}; s=0
  case $line in *skipped) s=${line##*, }; s=${s%% skipped};; esac
  total_p=$((total_p + p)); total_f=$((total_f + f)); total_s=$((total_s + s))
  if [ "$f" -ne 0 ]; then status=1
  elif [ "$rc" -ne 0 ]; then
    echo "$t: FAILED: exited with status $rc after its summary (a sanitizer report at exit?)"
    total_f=$((total_f + 1)); status=1
  fi
done
if [ -n "${GLM_TEST_ONLY:-}" ] && [ $((total_p + total_f + total_s)) -eq 0 ]; then
  echo "GLM_TEST_ONLY=$GLM_TEST_ONLY matched no test in $# binaries"
  total_f=$((total_f + 1)); status=1
fi
echo "$total_p passed, $total_f failed, $total_s skipped"
exit $status
