"""Compile check of the PyTorch CUDA adapter (plugins/torch/*.cu) with nvcc, against the installed
torch's headers. The CPU wheel ships every header but one that CMake generates for CUDA builds
(c10/cuda/impl/cuda_cmake_macros.h, a single macro), which the test supplies. Compile only: no GPU."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_torch_cuda_adapter_compiles(tmp_path):
    stub = tmp_path / "inc" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
    inc = Path(torch.__file__).parent / "include"
    cmd = [
        "nvcc", "-c", str(REPO / "plugins/torch/deform_conv3d_op_cuda.cu"), "-o", str(tmp_path / "op_cuda.o"),
        "-std=c++17", "-gencode", "arch=compute_80,code=sm_80", "--expt-relaxed-constexpr", "-DD3D_WITH_CUDA",
        # The flags torch.utils.cpp_extension passes to nvcc: no implicit half/bfloat16 conversions.
        "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__", "-diag-suppress", "3306", "-w",
        f"-I{tmp_path / 'inc'}", f"-I{inc}", f"-I{inc / 'torch/csrc/api/include'}",
        f"-I{sysconfig.get_paths()['include']}", f"-I{REPO / 'plugins/kernels'}", f"-I{REPO / 'plugins/torch'}",
        "-Xcompiler", "-fPIC",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "op_cuda.o").stat().st_size > 10_000
