#!/bin/sh
# Measures glm-convert's BF16 -> FP8 throughput (MB/s of input) on a synthetic BF16
# checkpoint with the real GLM-4.7 matrix shapes: LAYERS dense layers (330 M parameters,
# 650 MB each) and a 512-token vocabulary so the embeddings stay small. The input is
# read from the page cache (it was just written); the output is written and fsync'd.
#
# usage: scripts/bench-convert.sh [BIN_DIR] [WORK_DIR] [LAYERS] [THREADS...]
#   BIN_DIR  holds glm-convert (default build/bin); WORK_DIR gets the checkpoints
#   (default /tmp/glm-bench-convert); LAYERS 1-3 (default 1); THREADS: the -t values to
#   time (default: 1, 2 and every core). GLM_CONVERT_OLD=path also times that binary
#   (an older glm-convert, which takes no -t) once, for a before/after figure.
set -e
bin=${1:-build/bin}
work=${2:-/tmp/glm-bench-convert}
layers=${3:-1}
shift 3 2>/dev/null || shift $#
threads=${*:-"1 2 $(nproc)"}
mkdir -p "$work"
src="$work/bf16-$layers"
if [ ! -f "$src/model.safetensors.index.json" ]; then
  "$bin/glm-convert" --synthetic --preset glm-4.7 --layers "$layers" --vocab 512 --format bf16 --force --out "$src"
fi
bytes=$(cat "$src"/*.safetensors | wc -c)
echo "input: $src, $bytes bytes, $(nproc) cores"
for fmt in fp8-channel fp8-block; do
  for t in $threads; do
    out="$work/out-$fmt-t$t"
    start=$(date +%s.%N)
    "$bin/glm-convert" -m "$src" --format "$fmt" -t "$t" --force --out "$out" 2>/dev/null
    end=$(date +%s.%N)
    echo "$fmt -t $t: $(echo "$start $end $bytes" | awk '{ printf "%.2f s, %.0f MB/s", $2 - $1, $3 / 1e6 / ($2 - $1) }')"
    rm -rf "$out"
  done
done
if [ -n "$GLM_CONVERT_OLD" ]; then
  out="$work/out-old"
  rm -rf "$out"
  start=$(date +%s.%N)
  "$GLM_CONVERT_OLD" -m "$src" --format fp8-channel --out "$out" 2>/dev/null
  end=$(date +%s.%N)
  echo "old glm-convert fp8-channel: $(echo "$start $end $bytes" | awk '{ printf "%.2f s, %.0f MB/s", $2 - $1, $3 / 1e6 / ($2 - $1) }')"
  rm -rf "$out"
fi
