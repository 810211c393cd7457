#!/bin/sh
# gpu-check.sh - the one script the GPU machine runs: build with CUDA, run the GPU
# tests, compute-sanitizer (memcheck) on the tiny checkpoints, and glm-bench on a
# synthetic full-width GLM-4.7 slice. Logs go to $OUT (default ./gpu-out); a short
# table is printed last.
#
# usage: scripts/gpu-check.sh [quick|fast|tests|tp|spec]  quick: no benchmark; fast: a shorter one;
#        tests: the GPU tests alone (GPU_TESTS="test-gpu-tp ..." picks them; default all);
#        tp: the GPU tests, memcheck of test-gpu-tp and the tensor-parallel benchmarks;
#        spec: the GPU tests and the speculative-decoding benchmarks; final: the GPU tests,
#        memcheck of test-gpu-tp, serving at 64 requests against -b 64, and spec's benchmarks;
#        serve: no GPU tests; serving's time: -b 64 at depth 0 and 128, the scheduler at 64
#        requests (SERVE_BT step budgets), glm-server against glm-bench --serve on one checkpoint
# env:   FUZZ_SECONDS, FUZZ_BUILD  run the libFuzzer binaries of FUZZ_BUILD that long beside the tests
#        GLM_BENCH_LAYERS (default 13: 3 dense + 10 MoE, fits an 80 GB H100)
#        GLM_U8=DIR  a utf8proc include/ + lib/ tree when the machine has none
#        GLM_MHD=DIR a libmicrohttpd include/ + lib/ tree (glm-server) when the machine has none
set -u
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
MODE=${1:-full}
LAYERS=${GLM_BENCH_LAYERS:-13}
if [ -n "${GLM_U8:-}" ]; then
  export CPATH="$GLM_U8/include${CPATH:+:$CPATH}" LIBRARY_PATH="$GLM_U8/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
fi
if [ -n "${GLM_MHD:-}" ]; then
  export CPATH="$GLM_MHD/include${CPATH:+:$CPATH}" LIBRARY_PATH="$GLM_MHD/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
fi
J=$(nproc 2>/dev/null || echo 8)
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

note "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -1); $(nvcc --version | tail -1)"

# NCCL: the toolkit's, else the first nccl.h and libnccl found under /usr and /opt
# (a Python wheel's has libnccl.so.2 alone: a folder of links gives the linker its name)
if [ -z "${NCCL_HOME:-}" ] && [ ! -f /usr/local/cuda/include/nccl.h ]; then
  h=$(find /usr /opt -name nccl.h 2>/dev/null | head -n 1)
  l=$(find /usr /opt -name 'libnccl.so*' 2>/dev/null | head -n 1)
  if [ -n "$h" ] && [ -n "$l" ]; then
    mkdir -p /tmp/nccl/lib && ln -sfn "$(dirname "$h")" /tmp/nccl/include && ln -sf "$l" /tmp/nccl/lib/libnccl.so
    export NCCL_HOME=/tmp/nccl
  fi
fi
note "nccl: ${NCCL_HOME:-the CUDA toolkit's} ($(ls "${NCCL_HOME:-/usr/local/cuda}"/include/nccl.h 2>&1 | head -n 1))"

# 1. build: the library, the GPU tests and glm-bench (the whole tree when it builds)
t0=$(date +%s)
if ! make -j"$J" all > "$OUT/build.log" 2>&1; then
  echo "== make all failed; building the GPU targets alone" >> "$OUT/build.log"
fi
if [ "$MODE" = serve ]; then
  GPU_TESTS=
elif [ -n "${GPU_TESTS:-}" ]; then
  GPU_TESTS=$(for t in $GPU_TESTS; do printf 'build/tests/%s ' "$t"; done)
else
  GPU_TESTS=$(ls tests/test-gpu-*.c | sed 's|^tests/\(.*\)\.c$|build/tests/\1|')
fi
make -k -j"$J" build/lib/libglm.a $GPU_TESTS build/bin/glm-bench build/bin/glm-perplexity build/bin/glm-run build/bin/glm-server \
  build/bin/glm-convert >> "$OUT/build.log" 2>&1
if [ ! -x build/bin/glm-bench ] && [ -f build/tools/glm-bench.o ]; then
  make build/tools/common.o >> "$OUT/build.log" 2>&1
  cc -o build/bin/glm-bench build/tools/glm-bench.o build/tools/common.o build/lib/libglm.a -lutf8proc -lm -pthread \
     -L/usr/local/cuda/lib64 -lcublasLt -lcudart -lstdc++ -ldl -lrt >> "$OUT/build.log" 2>&1
fi
note "build: $(( $(date +%s) - t0 )) s, $(grep -c -E 'error:|Error [0-9]' "$OUT/build.log") error lines"
for b in $GPU_TESTS build/bin/glm-bench; do
  [ -x "$b" ] || note "MISSING: $b (see build.log)"
done
# spills and 16-byte loads of the decode kernels, from the compiler's side
if command -v cuobjdump >/dev/null && [ -f build/ggml-free-kernels/gemv.cu.o ]; then
  sass=$(cuobjdump --dump-sass build/ggml-free-kernels/gemv.cu.o 2>/dev/null)
  note "gemv.cu SASS: $(echo "$sass" | grep -c 'LDG.E.128') LDG.E.128, $(echo "$sass" | grep -c -E 'LDL|STL') LDL/STL"
  note "gemm-lt/attention SASS: $(cuobjdump --dump-sass build/ggml-free-kernels/attention.cu.o 2>/dev/null | grep -c -E 'HMMA|QGMMA|HGMMA') MMA instructions in attention.cu"
fi

# 1b. fuzzing on the spare cores while the GPU runs (FUZZ_SECONDS set and libFuzzer
# binaries in FUZZ_BUILD, e.g. built elsewhere by make fuzz): every target at once
fuzz_pid=
if [ -n "${FUZZ_SECONDS:-}" ] && ls "${FUZZ_BUILD:-build-fuzz}"/fuzz-* >/dev/null 2>&1; then
  n_fuzz=$(ls "${FUZZ_BUILD:-build-fuzz}"/fuzz-* | wc -l)
  (FUZZ_OUT=/tmp/fuzz-out nice -n 19 sh scripts/fuzz.sh "$FUZZ_SECONDS" "$n_fuzz" > "$OUT/fuzz.txt" 2>&1) &
  fuzz_pid=$!
fi

# serve: where serving's time goes, without the GPU tests
if [ "$MODE" = serve ]; then
  S="$OUT/serve.md"
  t0=$(date +%s)
  build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch -p 0 -n 128 -b 64 -r 2 -o md > "$S" 2> "$OUT/serve.err"
  build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch --no-probe -p 0 -n 128 -b 64 -d 128 -r 2 -o md \
    2>> "$OUT/serve.err" | tail -n 1 >> "$S"
  note "bench -b 64 at depth 0 and 128: exit $? ($(( $(date +%s) - t0 )) s)"
  # decode attention's context splits (GLM_CUDA_ATT_WAVES blocks an SM) at depth 128 and 1024
  for w in ${SERVE_WAVES:-}; do
    t0=$(date +%s)
    for d in 128 1024; do
      echo "== GLM_CUDA_ATT_WAVES=$w -d $d" >> "$S"
      GLM_CUDA_ATT_WAVES=$w build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch --no-probe -p 0 -n 64 \
        -b 1,8,64 -d "$d" -r 2 -o md 2>> "$OUT/serve.err" | tail -n 3 >> "$S"
    done
    note "bench waves $w: exit $? ($(( $(date +%s) - t0 )) s)"
  done
  for bt in ${SERVE_BT:-512 2048 8192}; do
    t0=$(date +%s)
    echo "== --batch-tokens $bt" >> "$S"
    build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch --no-probe --serve -np 64 --requests 64 --in 128 \
      --out 128 --batch-tokens "$bt" -o md >> "$S" 2>> "$OUT/serve.err"
    note "bench serve -np 64 --batch-tokens $bt: exit $? ($(( $(date +%s) - t0 )) s)"
  done
  # glm-server against glm-bench --serve: one checkpoint with a tokenizer (glm-tiny, and a
  # full-width slice written by glm-convert with glm-tiny's vocabulary and tokenizer;
  # SERVE_LAYERS, default 13: about 40 GB on disk, 80-90 s to write)
  t0=$(date +%s)
  sl=/tmp/glm-serve-slice
  rm -rf "$sl"
  build/bin/glm-convert --synthetic --preset glm-4.7 --layers "${SERVE_LAYERS:-13}" --vocab 8192 --out "$sl" > "$OUT/convert.log" 2>&1 &&
    cp models/glm-tiny/tokenizer.json models/glm-tiny/tokenizer_config.json "$sl"/
  note "convert slice of ${SERVE_LAYERS:-13} layers: exit $? ($(( $(date +%s) - t0 )) s)"
  for md in models/glm-tiny "$sl"; do
    [ -f "$md/tokenizer.json" ] || continue
    t0=$(date +%s)
    echo "== $md: glm-bench --serve, then glm-server (stream, then not)" >> "$S"
    build/bin/glm-bench -m "$md" --device cuda --serve -np 64 --requests 64 --in 104 --out "${SERVE_OUT:-512}" --batch-tokens 8192 -o json \
      > "$OUT/serve-bench.json" 2>> "$OUT/serve.err"
    grep -E 'output_tok|itl_p50|ttft_p50|decode_step|step_ms' "$OUT/serve-bench.json" | tr -d '\n' >> "$S"; echo >> "$S"
    build/bin/glm-server -m "$md" --device cuda -np 64 -c 1024 --batch-tokens 8192 --port 8090 > "$OUT/server.log" 2>&1 &
    srv=$!
    for i in $(seq 120); do
      python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/health')" 2>/dev/null && break
      sleep 1
    done
    python3 scripts/serve-load.py --url http://127.0.0.1:8090 --requests 64 --words 100 --max-tokens "${SERVE_OUT:-512}" --stream >> "$S" 2>&1
    python3 scripts/serve-load.py --url http://127.0.0.1:8090 --requests 64 --words 100 --max-tokens "${SERVE_OUT:-512}" >> "$S" 2>&1
    python3 scripts/serve-load.py --url http://127.0.0.1:8090 --requests 64 --words 100 --max-tokens "${SERVE_OUT:-512}" --stream >> "$S" 2>&1
    kill "$srv"; wait "$srv"
    note "server vs bench on $md: ($(( $(date +%s) - t0 )) s)"
  done
  rm -rf "$sl"
  echo
  cat "$summary"
  echo
  cat "$S"
  grep -v '^profile\|^ ' "$OUT/serve.err" | tail -n 8
  exit 0
fi

# 2. GPU tests
t0=$(date +%s)
GLM_TEST_TIMEOUT=${GLM_TEST_TIMEOUT:-1200} sh tests/run-tests.sh $GPU_TESTS > "$OUT/test-gpu.log" 2>&1
note "test-gpu: $(tail -n 1 "$OUT/test-gpu.log") ($(( $(date +%s) - t0 )) s)"
grep -E 'FAIL|failed:|rel err|probe:|max \|diff\||per row|argmax|greedy|graphs off|together|asked for|copy |SKIP|passed, ' "$OUT/test-gpu.log" | head -90 >> "$summary"

if [ "$MODE" = tests ]; then
  echo
  cat "$summary"
  exit 0
fi

# spec: speculative decoding on the GPU: glm-tiny (its trained MTP layer) at --draft 0 and
# 2, and the verify step of 3 tokens on the synthetic slice; final: memcheck of the
# tensor-parallel tests, those, and the serving throughput at 64 requests against -b 64
if [ "$MODE" = final ] && command -v compute-sanitizer >/dev/null; then
  t0=$(date +%s)
  GLM_TEST_QUICK=1 GLM_TEST_ONLY='[tf]*' compute-sanitizer --tool memcheck --error-exitcode 3 build/tests/test-gpu-tp \
    > "$OUT/sanitizer-tp.log" 2>&1
  note "memcheck (test-gpu-tp, tiny, shared-GPU ranks): exit $?, $(grep 'ERROR SUMMARY' "$OUT/sanitizer-tp.log" | tail -1), $(grep 'passed, ' "$OUT/sanitizer-tp.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
fi
if [ "$MODE" = final ]; then
  t0=$(date +%s)
  build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch -p 0 -n 128 -b 64 -r 2 -o md > "$OUT/bench-serve.md" 2>> "$OUT/bench-serve.err"
  build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch --no-probe --serve -np 64 --requests 64 --in 128 --out 128 \
    -o md >> "$OUT/bench-serve.md" 2>> "$OUT/bench-serve.err"
  note "bench serve -np 64 vs -b 64: exit $? ($(( $(date +%s) - t0 )) s)"
  cat "$OUT/bench-serve.md" >> "$summary"
  MODE=spec
fi
if [ "$MODE" = spec ]; then
  for d in 0 2; do
    t0=$(date +%s)
    build/bin/glm-bench -m models/glm-tiny --device cuda -p 0 -n 128 -r 3 --draft "$d" --no-probe -o md \
      >> "$OUT/bench-spec.md" 2>> "$OUT/bench-spec.err"
    note "bench glm-tiny --draft $d: exit $? ($(( $(date +%s) - t0 )) s)"
  done
  t0=$(date +%s)
  build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch -p 0 -n 32 -r 2 --draft 2 -o md \
    >> "$OUT/bench-spec.md" 2>> "$OUT/bench-spec.err"
  note "bench slice --draft 2: exit $? ($(( $(date +%s) - t0 )) s)"
  echo
  cat "$summary"
  echo
  cat "$OUT/bench-spec.md"
  grep -v '^profile\|^ ' "$OUT/bench-spec.err" | tail -n 6
  exit 0
fi

# tp: memcheck of the tensor-parallel tests, then the synthetic slice at --tp 1 and at
# --tp 8 on this one GPU (shared-GPU ranks, projected), and rank 0 of the whole 92-layer
# GLM-4.7 at --tp 8 alone (--project-only)
if [ "$MODE" = tp ]; then
  if command -v compute-sanitizer >/dev/null; then
    t0=$(date +%s)
    # the NCCL test is left out: libnccl's own init probes kernels of other GPUs and the
    # sanitizer counts those refused calls (cudaFuncGetAttributes) as API errors
    GLM_TEST_QUICK=1 GLM_TEST_ONLY='[tf]*' compute-sanitizer --tool memcheck --error-exitcode 3 build/tests/test-gpu-tp \
      > "$OUT/sanitizer-tp.log" 2>&1
    note "memcheck (test-gpu-tp, tiny, shared-GPU ranks): exit $?, $(grep 'ERROR SUMMARY' "$OUT/sanitizer-tp.log" | tail -1), $(grep 'passed, ' "$OUT/sanitizer-tp.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
  fi
  BB="--synthetic glm-4.7 --fmt fp8ch -p 0 -n 32 -b 1,64 -r 2 -o md"
  for run in "1 tp $LAYERS" "8 tp $LAYERS" "8 ep $LAYERS" "8 tp 92 --project-only" "8 ep 92 --project-only"; do
    set -- $run
    t0=$(date +%s)
    extra=""
    [ "$1" -gt 1 ] && extra="--tp $1 --gpus 0 --moe-split $2 ${4:-}"
    echo "== glm-bench --layers $3 $extra" >> "$OUT/bench-tp.md"
    build/bin/glm-bench $BB --layers "$3" $extra >> "$OUT/bench-tp.md" 2>> "$OUT/bench-tp.err"
    note "bench --layers $3 $extra: exit $? ($(( $(date +%s) - t0 )) s)"
  done
  echo
  cat "$summary"
  echo
  cat "$OUT/bench-tp.md"
  exit 0
fi

# 3. compute-sanitizer memcheck on the tiny checkpoints
if command -v compute-sanitizer >/dev/null; then
  t0=$(date +%s)
  GLM_TEST_QUICK=1 compute-sanitizer --tool memcheck --error-exitcode 3 build/tests/test-gpu-model > "$OUT/sanitizer.log" 2>&1
  rc=$?
  note "memcheck (tiny checkpoints): exit $rc, $(grep -c 'Invalid\|ERROR SUMMARY: [1-9]' "$OUT/sanitizer.log") problem lines, $(grep 'ERROR SUMMARY' "$OUT/sanitizer.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
  t0=$(date +%s)
  GLM_TEST_ONLY=attention compute-sanitizer --tool memcheck --error-exitcode 3 build/tests/test-gpu-kernels > "$OUT/sanitizer-att.log" 2>&1
  rc=$?
  note "memcheck (attention kernels): exit $rc, $(grep 'ERROR SUMMARY' "$OUT/sanitizer-att.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
fi

# 4. GPU vs CPU on the tiny default model: perplexity and KL divergence over the held-out text
t0=$(date +%s)
kb="$OUT/kld-cpu.bin"
build/bin/glm-perplexity -f tests/data/tiny-ppl/heldout.txt -c 256 --device cpu --kl-divergence-base "$kb" \
  > "$OUT/kld.log" 2>&1
build/bin/glm-perplexity -f tests/data/tiny-ppl/heldout.txt -c 256 --device cuda --kl-divergence-base "$kb" --kl-divergence \
  >> "$OUT/kld.log" 2>&1
note "kld (glm-tiny, heldout, c=256, cuda vs cpu): exit $? ($(( $(date +%s) - t0 )) s)"
grep -i -E 'ppl =|kld|dp:|same top|tok/s' "$OUT/kld.log" | tail -n 12 >> "$summary"
rm -f "$kb"

# 5. benchmark on the synthetic slice (quick: skipped; fast: one repetition of the
# main tests, no fp8blk run)
if [ "$MODE" != quick ] && [ -x build/bin/glm-bench ]; then
  B="-p 512,2048 -n 128 -b 1,2,4,8,32,64 -r 3"
  [ "$MODE" = fast ] && B="-p 2048 -n 32 -b 1,8,64 -r 2"
  t0=$(date +%s)
  build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch $B -o md \
    > "$OUT/bench.md" 2> "$OUT/bench.err"
  note "bench fp8ch: exit $? ($(( $(date +%s) - t0 )) s)"
  if [ "$MODE" != fast ]; then
    t0=$(date +%s)
    build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8blk --no-probe -p 2048 -n 32 -b 1,64 -r 2 -o md \
      > "$OUT/bench-blk.md" 2>> "$OUT/bench.err"
    note "bench fp8blk: exit $? ($(( $(date +%s) - t0 )) s)"
  fi
  if [ "$MODE" = fast ]; then  # batch 8 with the dense products on cuBLASLt above 4 tokens
    GLM_CUDA_GEMV_MAX=4 build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch --no-probe -p 0 -n 32 -b 8 -r 2 \
      -o md 2>> "$OUT/bench.err" | tail -n 1 | sed 's/^/GEMV_MAX=4: /' >> "$OUT/bench.md"
  fi
  grep -v '^profile\|^ ' "$OUT/bench.err" | tail -n 4 >> "$summary"
  # where the time goes: GPU time per op, graphs off (appended to bench.err)
  build/bin/glm-bench --synthetic glm-4.7 --layers "$LAYERS" --fmt fp8ch --no-probe -p 2048 -n 8 -b 1,8,64 -r 1 --profile -o md \
    >> "$OUT/bench.err" 2>&1
  note "profile run: exit $?"
fi

if [ -n "$fuzz_pid" ]; then
  wait "$fuzz_pid"
  note "fuzz ($FUZZ_SECONDS s a target, all at once, nice 19):"
  tail -n 14 "$OUT/fuzz.txt" >> "$summary"
fi

echo
cat "$summary"
[ -f "$OUT/bench.md" ] && { echo; cat "$OUT/bench.md"; }
[ -f "$OUT/bench-blk.md" ] && { echo; cat "$OUT/bench-blk.md"; }
exit 0
