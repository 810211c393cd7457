#!/bin/sh
# fuzz.sh - runs each libFuzzer target of build-fuzz/ (make fuzz) for SECONDS, JOBS
# targets at a time, starting from its seed corpus tests/fuzz/corpus/<name>/. New
# corpus entries go to $FUZZ_OUT/corpus/<name>/ (kept between runs, never committed),
# crashes, leaks and timeouts to $FUZZ_OUT/crashes/<name>/, each run's log to
# $FUZZ_OUT/logs/<name>.log; a table is printed last: per target, how long it ran clean,
# exec/s, new corpus entries, and the first finding. Exits 1 when any target found one.
#
# usage: scripts/fuzz.sh [SECONDS [JOBS [NAME...]]]   default: 60 s, 1 at a time, all
# env:   FUZZ_OUT (default fuzz-out), FUZZ_BUILD (default build-fuzz),
#        FUZZ_TIMEOUT seconds one input may take (default 10), FUZZ_ARGS more libFuzzer flags
set -u
secs=${1:-60}; jobs=${2:-1}
[ $# -gt 0 ] && shift; [ $# -gt 0 ] && shift
out=${FUZZ_OUT:-fuzz-out}; bdir=${FUZZ_BUILD:-build-fuzz}
case "$secs$jobs" in *[!0-9]*|'') echo "usage: scripts/fuzz.sh [SECONDS [JOBS [NAME...]]]"; exit 2;; esac
if [ $# -eq 0 ]; then
  for b in "$bdir"/fuzz-*; do [ -x "$b" ] && set -- "$@" "${b##*/fuzz-}"; done
fi
if [ $# -eq 0 ]; then echo "no fuzz targets in $bdir/: run make fuzz first"; exit 2; fi
mkdir -p "$out/logs"

# Runs one target for $secs seconds; writes "<seconds> <exit status>" to its .time file.
run_one() {
  n=$1
  mkdir -p "$out/corpus/$n" "$out/crashes/$n"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  "$bdir/fuzz-$n" -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-10}" -print_final_stats=1 \
    -artifact_prefix="$out/crashes/$n/" ${FUZZ_ARGS:-} "$out/corpus/$n" "tests/fuzz/corpus/$n" \
    > "$out/logs/$n.log" 2>&1
  rc=$?
  echo "$(( $(date +%s) - t0 )) $rc" > "$out/logs/$n.time"
}

echo "fuzzing $# targets for $secs s each, $jobs at a time; output in $out/"
running=0
for n in "$@"; do
  if [ ! -x "$bdir/fuzz-$n" ]; then echo "$n: no $bdir/fuzz-$n (make fuzz)"; continue; fi
  if [ ! -d "tests/fuzz/corpus/$n" ]; then echo "$n: warning: no seed corpus tests/fuzz/corpus/$n/"; fi
  rm -f "$out/logs/$n.time"
  run_one "$n" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait; running=0; fi
done
wait

found=0
printf '%-18s %8s %10s %8s  %s\n' target clean_s exec/s new result
for n in "$@"; do
  [ -f "$out/logs/$n.time" ] || continue
  read -r took rc < "$out/logs/$n.time"
  log="$out/logs/$n.log"
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  new=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -n 1)
  art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | head -n 1)
  if [ "$rc" -eq 0 ] && [ -z "$art" ]; then
    res="clean"
  else
    found=1
    what=$(grep -m 1 -o -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer|UndefinedBehaviorSanitizer)[^(]*|runtime error: .*' "$log" |
          head -n 1 | sed 's/ on address.*//')
    res="FOUND (exit $rc) ${what:-see $log}${art:+: $art}"
  fi
  printf '%-18s %8s %10s %8s  %s\n' "$n" "$took" "${eps:-?}" "${new:-?}" "$res"
done
if [ "$found" -ne 0 ]; then
  echo "reproduce: $bdir/fuzz-NAME FILE; add the file as tests/fuzz/corpus/NAME/repro-WHAT once fixed"
fi
exit $found
