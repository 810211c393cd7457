#!/bin/sh
# Runs test binaries, sums their "N passed, N failed" lines, and prints the total
# last; exits non-zero if any test failed or any binary crashed or printed no summary.
total_p=0; total_f=0; status=0
for t in "$@"; do
  echo "== $t"
  out=$("$t" 2>&1); rc=$?
  printf '%s\n' "$out"
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  if [ -z "$line" ]; then
    echo "$t: exited $rc without a summary line"; total_f=$((total_f + 1)); status=1; continue
  fi
  p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
  total_p=$((total_p + p)); total_f=$((total_f + f))
  if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then status=1; fi
done
echo "$total_p passed, $total_f failed"
exit $status
