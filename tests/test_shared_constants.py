"""The op contract's numbers, names and output-size rule are defined once (issue 19):
``plugins/kernels/deform_conv3d_contract.h`` for every native adapter, read by Python at import
(``d3d._plugins.contract``). These tests keep it so: no second definition in the sources, and the
compiled libraries (PyTorch op, ONNX Runtime op) behave as the values Python reads from the header."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from d3d._plugins import contract

ROOT = Path(__file__).resolve().parent.parent
HEADER = "plugins/kernels/deform_conv3d_contract.h"
NAMES = {
    "kOpType": "OP_TYPE",
    "kDomain": "DOMAIN",
    "kOpsetVersion": "OPSET_VERSION",
    "kPluginVersion": "PLUGIN_VERSION",
    "kDefaultStride": "DEFAULT_STRIDE",
    "kDefaultPad": "DEFAULT_PAD",
    "kDefaultDilation": "DEFAULT_DILATION",
    "kDefaultGroup": "DEFAULT_GROUP",
    "kDefaultOffsetGroup": "DEFAULT_OFFSET_GROUP",
    "kDefaultDeformDims": "DEFAULT_DEFORM_DIMS",
    "kMaxAttr": "MAX_ATTR",
    "kMaxColElems": "MAX_COL_ELEMS",
}


def _native_sources() -> list[Path]:
    return [p for ext in ("h", "cpp", "cu", "cuh") for p in (ROOT / "plugins").rglob(f"*.{ext}")]


def test_python_reads_every_contract_value_from_the_header():
    """Each constant of the header is read (a value the parser misses would be an ImportError; one it
    misreads shows here against the header's text, evaluated independently of the module's parser)."""
    text = (ROOT / HEADER).read_text()
    for cpp, py in NAMES.items():
        line = re.search(rf"^constexpr .*\b{cpp}\s*=\s*(.+);$", text, re.MULTILINE)
        assert line, f"{cpp} is not defined on one line in {HEADER}"
        value = eval(line[1].replace("int64_t(1)", "1"))  # an int literal, 1 << n or a string literal
        assert getattr(contract, py) == value, cpp


def test_no_native_source_keeps_its_own_copy():
    """The contract's constants are defined only in the header, and the output-size arithmetic
    (dil * (k - 1)) appears in no other native source but the tests' independent checks."""
    defined = re.compile(r"constexpr\s+[\w:* ]+?\s(k\w+)\s*=")
    formula = re.compile(r"\*\s*\(\s*\w+\s*-\s*1\s*\)\s*-\s*1")
    for path in _native_sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel == HEADER:
            continue
        text = re.sub(r"//.*", "", path.read_text())  # code only: comments may state the rule
        own = {name for name in defined.findall(text) if name in NAMES or name.startswith("kMaxColElems")}
        assert not own, f"{rel} defines {sorted(own)} again (use {HEADER})"
        if not rel.startswith("plugins/tests/"):
            assert not formula.search(text), f"{rel} computes the output size itself (use conv_out_size)"


def test_no_python_module_keeps_its_own_copy():
    """Python's stages take the rule and the contract's values from d3d._plugins.contract: none computes
    the output size itself or assigns one of the contract's names."""
    formula = re.compile(r"\(\s*\w+(\[\w+\])?\s*-\s*1\s*\)\s*-\s*1\s*\)\s*//")
    assigned = re.compile(rf"^\s*({'|'.join(NAMES.values())})\s*(:[^=]+)?=", re.MULTILINE)
    for folder in ("d3d", "export", "runtime", "verify", "bench", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "plugins/contract.py":
                continue
            text = path.read_text()
            assert not formula.search(text), f"{rel} computes the output size itself (use conv_out_size)"
            copy = assigned.search(text)
            assert not copy, f"{rel} defines {copy[1]} again (import it from d3d._plugins.contract)"


def test_the_onnx_validator_and_the_compiled_op_share_the_attribute_limit(native):
    """MAX_ATTR as Python reads it is the limit the compiled PyTorch op enforces: a stride of MAX_ATTR is
    accepted by both, one more is refused by both."""
    from d3d.export.validate import attrs_error

    x, w = torch.ones(1, 1, 1, 1, 1), torch.ones(1, 1, 1, 1, 1)
    for stride, ok in ((contract.MAX_ATTR, True), (contract.MAX_ATTR + 1, False)):
        assert (attrs_error({"strides": [stride, 1, 1]}) == "") is ok
        offset = torch.zeros(1, 1, 1, 1, 1)
        if ok:
            y = torch.ops.d3d.deform_conv3d(x, offset, w, None, [stride, 1, 1], [0] * 3, [1] * 3, 1, 1, "T")
            assert y.shape == (1, 1, 1, 1, 1)
        else:
            with pytest.raises(RuntimeError, match=r"stride along T must be in \[1, 2\^20\]"):
                torch.ops.d3d.deform_conv3d(x, offset, w, None, [stride, 1, 1], [0] * 3, [1] * 3, 1, 1, "T")


def test_output_size_rule_matches_the_compiled_op(native):
    """Python's conv_out_size (d3d.ops.output_size, the reference, ONNX shape inference) against the
    compiled op's make_shape on random small problems, inputs too small for the kernel included: where
    Python says every extent is >= 1 the op returns exactly that shape, else it refuses."""
    from d3d.ops import output_size

    rng = random.Random(1234)
    refused = 0
    for _ in range(150):
        size = tuple(rng.randint(1, 6) for _ in range(3))
        k = tuple(rng.randint(1, 4) for _ in range(3))
        st, pd, dl = ([rng.randint(lo, hi) for _ in range(3)] for lo, hi in ((1, 3), (0, 2), (1, 3)))
        out = output_size(size, k, st, pd, dl)
        assert out == tuple(contract.conv_out_size(size[a], pd[a], dl[a], k[a], st[a]) for a in range(3))
        x, w = torch.ones(1, 1, *size), torch.ones(1, 1, *k)
        offset = torch.zeros(1, k[0] * k[1] * k[2], *(max(v, 1) for v in out))
        if min(out) >= 1:
            y = torch.ops.d3d.deform_conv3d(x, offset, w, None, st, pd, dl, 1, 1, "T")
            assert tuple(y.shape[2:]) == out, (size, k, st, pd, dl)
        else:
            refused += 1
            with pytest.raises(RuntimeError, match="too small"):
                torch.ops.d3d.deform_conv3d(x, offset, w, None, st, pd, dl, 1, 1, "T")
    assert refused > 0  # the draw reaches the too-small side as well
    # The case truncating division got wrong: T=2, kT=3 at stride 2 has no output position.
    assert output_size((2, 3, 3), (3, 1, 1), (2, 1, 1), 0, 1)[0] == 0
    with pytest.raises(RuntimeError, match="too small"):
        torch.ops.d3d.deform_conv3d(
            torch.ones(1, 1, 2, 3, 3), torch.zeros(1, 3, 1, 3, 3), torch.ones(1, 1, 3, 1, 1), None,
            [2, 1, 1], [0] * 3, [1] * 3, 1, 1, "T",
        )  # fmt: skip


def test_defaults_of_an_attributeless_node_are_the_contracts():
    """A DeformConv3d node with no attributes: the ONNX Runtime library (C++ defaults) computes what the
    fp64 reference computes with Python's defaults, and ONNX shape inference (Python defaults) gives the
    same shape."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from d3d.export import register_schema
    from d3d.native_libs import ort_ops_library
    from d3d.ops import deform_conv3d_reference, output_size
    from d3d.runtime.ort import create_session

    if ort_ops_library() is None:
        pytest.skip("libd3d_ort_ops.so not built")
    g = torch.Generator().manual_seed(7)
    size, k = (4, 5, 6), (3, 2, 3)
    o, c = 2 * contract.DEFAULT_GROUP, 2 * contract.DEFAULT_GROUP * contract.DEFAULT_OFFSET_GROUP
    st, pd, dl = contract.DEFAULT_STRIDE, contract.DEFAULT_PAD, contract.DEFAULT_DILATION
    out = output_size(size, k, st, pd, dl)
    taps = contract.DEFAULT_OFFSET_GROUP * k[0] * k[1] * k[2] * len(contract.DEFAULT_DEFORM_DIMS)
    x = torch.randn(1, c, *size, generator=g)
    offset = torch.randn(1, taps, *out, generator=g)
    w = torch.randn(o, c // contract.DEFAULT_GROUP, *k, generator=g)
    node = helper.make_node("DeformConv3d", ["x", "offset", "w"], ["y"], domain=contract.DOMAIN)
    graph = helper.make_graph(
        [node],
        "attributeless",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
            helper.make_tensor_value_info("offset", TensorProto.FLOAT, list(offset.shape)),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.numpy(), "w")],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(contract.DOMAIN, contract.OPSET_VERSION)]
    )
    register_schema()
    inferred = onnx.shape_inference.infer_shapes(proto).graph.output[0].type.tensor_type.shape
    assert [d.dim_value for d in inferred.dim] == [1, o, *out]
    got = create_session(proto).run(None, {"x": x.numpy(), "offset": offset.numpy()})[0]
    want = deform_conv3d_reference(
        x.double(),
        offset.double(),
        w.double(),
        stride=st,
        padding=pd,
        dilation=dl,
        groups=contract.DEFAULT_GROUP,
        offset_groups=contract.DEFAULT_OFFSET_GROUP,
        deform_dims=contract.DEFAULT_DEFORM_DIMS,
    )
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
