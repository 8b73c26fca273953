# ds4 — DeepSeek V4 Flash inference engine.
#   make               CPU binaries: ds4, ds4-quantize, ds4-test
#   make cuda [CUDA_ARCH=sm_90a]   the same binaries with the CUDA backend
#   make test          unit tests (ds4-test) + pytest suite (in .venv)
#   make test-asan     ASan+UBSan build of the unit tests, run
#   make fuzz          libFuzzer targets (clang), FUZZ_RUNS executions each
#   make deps          install the Debian (brew/dnf) packages the build needs
#
# Sources are found by wildcard, so new files need no Makefile edit:
#   src/**.c -> libds4 (engine); src/**.cu -> CUDA objects (make cuda only)
#   cli/*.c -> ds4; tools/quantize/*.c -> ds4-quantize; tests/unit/*.c -> ds4-test

CC      ?= cc
NVCC    ?= nvcc
CUDA_ARCH ?= sm_90a
CUDA_HOME ?= /usr/local/cuda
PYTHON  ?= python3
FUZZ_RUNS ?= 1000000

OPT     ?= -O2 -march=native
CSTD    := -std=c11 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter
CFLAGS_BASE := $(CSTD) $(WARN) $(OPT) -g -pthread -MMD -MP
LDLIBS  := -lutf8proc -ljansson -lm -lpthread -lcrypto

LIB_SRC   := $(sort $(shell find src -name '*.c'))
CU_SRC    := $(sort $(shell find src -name '*.cu'))
CLI_SRC   := $(sort $(wildcard cli/*.c))
QUANT_SRC := $(sort $(wildcard tools/quantize/*.c))
TEST_SRC  := $(sort $(wildcard tests/unit/*.c)) tests/runner.c
SERVER_SRC := $(sort $(wildcard server/*.c))
BENCH_SRC := $(sort $(wildcard tools/bench/*.c))
FUZZ_SRC  := $(sort $(wildcard tests/fuzz/fuzz_*.c))

BINS := ds4 ds4-quantize ds4-test
ifneq ($(SERVER_SRC),)
BINS += ds4-server
endif
ifneq ($(BENCH_SRC),)
BINS += ds4-bench
endif

# ---- build variants: B = object dir, extra flags per variant -------------------------
B ?= build
VARIANT_CFLAGS ?=
VARIANT_LDFLAGS ?=
CFLAGS := $(CFLAGS_BASE) $(VARIANT_CFLAGS)

obj = $(patsubst %.c,$(B)/%.o,$(1))
LIB_OBJ := $(call obj,$(LIB_SRC))
ifeq ($(WITH_CUDA),1)
LIB_OBJ += $(patsubst %.cu,$(B)/%.cu.o,$(CU_SRC))
CFLAGS += -DDS4_WITH_CUDA=1 -I$(CUDA_HOME)/include
LDLIBS += -L$(CUDA_HOME)/lib64 -lcudart -lstdc++ -Wl,-rpath,$(CUDA_HOME)/lib64
endif

.PHONY: all cuda cuda-progs cuda-test cuda-bench test test-unit test-py test-asan fuzz deps clean venv bench pylib
all: $(BINS)

$(B)/libds4.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# The library as a shared object, for pytest suites that call the C code through ctypes
# (tests/py/test_quant_gguf_py.py). PIE objects (Debian's default) cannot go into a .so
# (PC-relative references to libc data such as stderr), so `make pylib` builds it from
# its own -fPIC object dir, like test-asan: build-pic/libds4.so.
$(B)/libds4.so: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -shared -o $@ $^ $(LDLIBS)
pylib:
	$(MAKE) B=build-pic VARIANT_CFLAGS=-fPIC build-pic/libds4.so

# cli/ and server/ see only the public headers (include/); tools and tests may use src/.
$(B)/cli/%.o: cli/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Iinclude -c $< -o $@
$(B)/server/%.o: server/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Iinclude -c $< -o $@
$(B)/tests/%.o: tests/%.c $(B)/test_registry.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Iinclude -Isrc -Itests -I$(B) -c $< -o $@
$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Iinclude -Isrc -c $< -o $@
$(B)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) -std=c++17 -O3 -arch=$(CUDA_ARCH) -MMD -MP -Xcompiler -Wall,-Werror -Iinclude -Isrc -c $< -o $@

# The registry of test cases, regenerated when any test file changes.
$(B)/test_registry.h: $(wildcard tests/unit/*.c)
	@mkdir -p $(dir $@)
	@grep -h -o -E '^DS4_TEST(_SLOW)?\([a-z0-9_]+\)' $^ /dev/null | \
	  sed -E 's/^DS4_TEST_SLOW\((.*)\)/DS4_REGISTER(\1, 1)/; s/^DS4_TEST\((.*)\)/DS4_REGISTER(\1, 0)/' > $@.tmp
	@if cmp -s $@.tmp $@; then rm $@.tmp; else mv $@.tmp $@; fi

ds4: $(call obj,$(CLI_SRC)) $(B)/libds4.a
	$(CC) $(CFLAGS) $(VARIANT_LDFLAGS) -o $@ $^ $(LDLIBS) -ledit
ds4-quantize: $(call obj,$(QUANT_SRC)) $(B)/libds4.a
	$(CC) $(CFLAGS) $(VARIANT_LDFLAGS) -o $@ $^ $(LDLIBS)
# ds4-test wraps the allocator (tests/unit/test_engine_alloc.c counts heap allocations
# in the decode loop). Only this link: the ASan runner (build-asan/ds4-test, its own rule)
# keeps ASan's own malloc, and the test skips its check there.
ALLOC_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign,--wrap=aligned_alloc
ds4-test: $(call obj,$(TEST_SRC)) $(B)/libds4.a
	$(CC) $(CFLAGS) $(VARIANT_LDFLAGS) -o $@ $^ $(LDLIBS) $(ALLOC_WRAP)
ds4-server: $(call obj,$(SERVER_SRC)) $(B)/libds4.a
	$(CC) $(CFLAGS) $(VARIANT_LDFLAGS) -o $@ $^ $(LDLIBS) -lmicrohttpd
ds4-bench: $(call obj,$(BENCH_SRC)) $(B)/libds4.a
	$(CC) $(CFLAGS) $(VARIANT_LDFLAGS) -o $@ $^ $(LDLIBS)

# ---- CUDA: same binaries, CUDA backend compiled in ------------------------------------
cuda:
	$(MAKE) B=build-cuda WITH_CUDA=1 all cuda-progs

# CUDA op tests and benchmarks: `make cuda` compiles them (CI); running needs a GPU.
# They link only the kernels and the CPU reference (no libds4 dependencies).
# graph.cu: every launch (common.cuh ds4cu::launch) can be recorded for a decode graph.
CUDA_REF_OBJ = $(call obj,src/core/common.c src/model/ggml_type.c $(wildcard src/model/quant*.c) src/model/iq2_tables.c) \
               $(B)/src/backend/cuda/graph.cu.o
$(B)/cuda-test-matvec: $(B)/tests/cuda/test_matvec.cu.o $(B)/src/backend/cuda/matvec.cu.o $(CUDA_REF_OBJ)
	$(NVCC) -arch=$(CUDA_ARCH) -o $@ $^ -lm -lpthread
$(B)/cuda-test-mmq: $(B)/tests/cuda/test_mmq.cu.o $(B)/src/backend/cuda/mmq.cu.o $(B)/src/backend/cuda/mmf16.cu.o $(B)/src/backend/cuda/matvec.cu.o $(CUDA_REF_OBJ)
	$(NVCC) -arch=$(CUDA_ARCH) -o $@ $^ -lm -lpthread
$(B)/cuda-matvec-bench: $(B)/bench/cuda_matvec_bench.cu.o $(B)/src/backend/cuda/matvec.cu.o $(CUDA_REF_OBJ)
	$(NVCC) -arch=$(CUDA_ARCH) -o $@ $^ -lm -lpthread
# cuBLAS at the dense prefill shapes (measurement only; the engine does not use cuBLAS)
$(B)/cuda-cublas-bench: $(B)/bench/cublas_gemm_bench.cu.o
	$(NVCC) -arch=$(CUDA_ARCH) -o $@ $^ -lcublas
# Backend op tests (CUDA vs CPU backend, tests/cuda/test_ops.cu): links libds4.
# Fused-op cases live in tests/cuda/ops_*.cu (one file per op family).
CUDA_OPS_TESTS = $(patsubst %.cu,$(B)/%.cu.o,$(sort $(wildcard tests/cuda/ops_*.cu)))
$(B)/cuda-test-ops: $(B)/tests/cuda/test_ops.cu.o $(CUDA_OPS_TESTS) $(B)/libds4.a
	$(NVCC) -arch=$(CUDA_ARCH) -o $@ $^ -lm -lpthread
cuda-progs: $(B)/cuda-test-matvec $(B)/cuda-test-mmq $(B)/cuda-matvec-bench $(B)/cuda-test-ops $(B)/cuda-cublas-bench
cuda-test:
	$(MAKE) B=build-cuda WITH_CUDA=1 build-cuda/cuda-test-matvec
	./build-cuda/cuda-test-matvec
cuda-bench:
	$(MAKE) B=build-cuda WITH_CUDA=1 build-cuda/cuda-matvec-bench
	./build-cuda/cuda-matvec-bench

# ---- tests ------------------------------------------------------------------------------
VENV := .venv
$(VENV)/.stamp: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	touch $@
venv: $(VENV)/.stamp

test: test-unit test-py
test-unit: ds4-test
	./ds4-test
test-py: all pylib $(VENV)/.stamp
	$(VENV)/bin/python -m pytest -q tests/py

# ASan + UBSan build of the unit runner (its own object dir and binary).
test-asan:
	$(MAKE) B=build-asan OPT="-O1 -march=native" VARIANT_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  VARIANT_LDFLAGS="-fsanitize=address,undefined" build-asan/ds4-test
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./build-asan/ds4-test

build-asan/ds4-test: $(call obj,$(TEST_SRC)) $(B)/libds4.a
	$(CC) $(CFLAGS) $(VARIANT_LDFLAGS) -o $@ $^ $(LDLIBS)

# ASan + UBSan build of the server (its own object dir and binary), for the soak test
# (tests/py/test_server_soak.py, -m slow): build-asan-srv/ds4-server.
.PHONY: server-asan
server-asan:
	$(MAKE) B=build-asan-srv OPT="-O1 -march=native" VARIANT_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	  VARIANT_LDFLAGS="-fsanitize=address,undefined" build-asan-srv/ds4-server

build-asan-srv/ds4-server: $(call obj,$(SERVER_SRC)) $(B)/libds4.a
	$(CC) $(CFLAGS) $(VARIANT_LDFLAGS) -o $@ $^ $(LDLIBS) -lmicrohttpd

# libFuzzer targets: tests/fuzz/fuzz_NAME.c defines LLVMFuzzerTestOneInput.
FUZZ_CC := clang
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(FUZZ_SRC))
build-fuzz/%: tests/fuzz/%.c $(LIB_SRC)
	@mkdir -p build-fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(LIB_SRC) $(LDLIBS)
# fuzz_server_request also compiles the server's parsers and adapters (all of server/ but
# main.c and http.c: the target defines main.c's globals itself and needs no libmicrohttpd).
FUZZ_SERVER_SRC := $(filter-out server/main.c server/http.c,$(SERVER_SRC))
build-fuzz/fuzz_server_request: tests/fuzz/fuzz_server_request.c $(LIB_SRC) $(FUZZ_SERVER_SRC) server/server.h
	@mkdir -p build-fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(LIB_SRC) $(FUZZ_SERVER_SRC) $(LDLIBS)
fuzz: $(FUZZ_BINS)
	@for f in $(FUZZ_BINS); do \
	  n=$$(basename $$f); mkdir -p build-fuzz/corpus-$$n; \
	  seed=tests/fuzz/seeds/$$n; [ -d $$seed ] || seed=; \
	  echo "== $$n: $(FUZZ_RUNS) runs"; \
	  ./$$f -runs=$(FUZZ_RUNS) -max_len=65536 build-fuzz/corpus-$$n $$seed || exit 1; \
	done

bench: all

deps:
	bash scripts/deps.sh

clean:
	rm -rf build build-cuda build-asan build-fuzz build-pic $(BINS) ds4-server ds4-bench

-include $(shell find $(sort build build-cuda build-asan build-pic $(B)) -name '*.d' 2>/dev/null)
