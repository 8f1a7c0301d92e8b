"""Limits kept in more than one place across C++ and Python are pinned together here, so changing one copy
without the others fails the suite (issue 19). The values are read from the sources as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# `constexpr int64_t <name> = int64_t(1) << <shift>;`
_SHIFT = re.compile(r"constexpr\s+int64_t\s+(\w+)\s*=\s*int64_t\(1\)\s*<<\s*(\d+)\s*;")


def _cpp_constant(path: str, name: str) -> int:
    found = {n: 1 << int(s) for n, s in _SHIFT.findall((ROOT / path).read_text())}
    assert name in found, f"{name} is not defined as int64_t(1) << n in {path}"
    return found[name]


def test_the_column_buffer_cap_is_the_same_in_every_adapter():
    core = _cpp_constant("plugins/core/plugin_core.h", "kMaxColElems")
    torch_op = _cpp_constant("plugins/torch/deform_conv3d_op.cpp", "kMaxColElems")
    ort_cuda = _cpp_constant("plugins/onnxruntime/deform_conv3d_ort_cuda.cu", "kMaxColElemsCuda")
    assert core == torch_op == ort_cuda == 1 << 26


def test_the_onnx_validator_uses_the_kernels_attribute_limit():
    from d3d.export.validate import MAX_ATTR

    assert _cpp_constant("plugins/kernels/deform_conv3d_attrs.h", "kMaxAttr") == MAX_ATTR == 1 << 20
