"""The DeformConv3d contract's numbers and names, read from the one C++ header that defines them.

``kernels/deform_conv3d_contract.h`` is compiled into every native adapter (PyTorch op, ONNX Runtime op,
TensorRT plugin); this module reads the same lines when imported, so Python keeps no copy of them
(issue 19). It needs neither torch nor onnx: the export layer's validation imports it. The header ships
with the package (``d3d._plugins``), so this works from a checkout and from a wheel alike.
"""

from __future__ import annotations

import re
from pathlib import Path

HEADER = Path(__file__).resolve().parent / "kernels" / "deform_conv3d_contract.h"

# `constexpr <type> <name> = <value>;` with <value> an integer, `int64_t(1) << n` or a string literal.
_DEFINITION = re.compile(
    r"^constexpr\s+(?:int64_t|const\s+char\*)\s+(k\w+)\s*=\s*"
    r'(?:(?P<int>-?\d+)|int64_t\(1\)\s*<<\s*(?P<shift>\d+)|"(?P<str>[^"\\]*)")\s*;',
    re.MULTILINE,
)


def _read(path: Path) -> dict[str, int | str]:
    values: dict[str, int | str] = {}
    for m in _DEFINITION.finditer(path.read_text(encoding="utf-8")):
        if m["int"] is not None:
            values[m[1]] = int(m["int"])
        elif m["shift"] is not None:
            values[m[1]] = 1 << int(m["shift"])
        else:
            values[m[1]] = m["str"]
    return values


_VALUES = _read(HEADER)


def _get(name: str, kind: type):
    value = _VALUES.get(name)
    if not isinstance(value, kind):
        raise ImportError(f"{HEADER}: no one-line constexpr {kind.__name__} definition of {name}")
    return value


OP_TYPE: str = _get("kOpType", str)
DOMAIN: str = _get("kDomain", str)
OPSET_VERSION: int = _get("kOpsetVersion", int)
PLUGIN_VERSION: str = _get("kPluginVersion", str)

DEFAULT_STRIDE: int = _get("kDefaultStride", int)
DEFAULT_PAD: int = _get("kDefaultPad", int)
DEFAULT_DILATION: int = _get("kDefaultDilation", int)
DEFAULT_GROUP: int = _get("kDefaultGroup", int)
DEFAULT_OFFSET_GROUP: int = _get("kDefaultOffsetGroup", int)
DEFAULT_DEFORM_DIMS: str = _get("kDefaultDeformDims", str)

MAX_ATTR: int = _get("kMaxAttr", int)
MAX_COL_ELEMS: int = _get("kMaxColElems", int)


def conv_out_add(pad: int, dil: int, k: int) -> int:
    """The input-independent part of the output-size rule (``conv_out_add`` in the header)."""
    return 2 * pad - dil * (k - 1) - 1


def conv_out_size(size: int, pad: int, dil: int, k: int, stride: int) -> int:
    """Output extent of one axis: (in + 2*pad - dil*(k-1) - 1) floordiv stride + 1 (``conv_out_size``);
    <= 0 where the input is too small for the kernel. tests/test_shared_constants.py checks it against
    the compiled op."""
    return (size + conv_out_add(pad, dil, k)) // stride + 1
