"""The engine cache (d3d.export.engine_cache): key computation, hit and miss, atomic storage, and
`d3d cache list|clear`. The hit/miss tests build real engines with TensorRT-RTX on the CPU (ahead of
time, with the DeformConv3d plugin loaded); the TensorRT path (a GPU's builder) is not run here."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from d3d.cli import main as cli
from d3d.errors import D3DError
from d3d.export import engine_cache as ec

PROFILE = ((1, 1, 7, 16, 16), (1, 1, 7, 24, 24), (1, 1, 7, 32, 32))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("D3D_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "engines"


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    onnx, plugin = tmp_path / "m.onnx", tmp_path / "libp.so"
    onnx.write_bytes(b"onnx-bytes")
    plugin.write_bytes(b"plugin-bytes")
    return onnx, plugin


def _key(onnx, plugin_path, **change):
    args = dict(
        plugin=plugin_path,
        builder="tensorrt",
        builder_version="10.16.0",
        gpu="NVIDIA GeForce RTX 4090",
        compute_capability="8.9",
        precision="fp16",
        profile=PROFILE,
    )
    return ec.engine_key(onnx, **{**args, **change})


# --- key --------------------------------------------------------------------------------------------


def test_same_inputs_same_key_and_name(files, tmp_path):
    onnx, plugin = files
    a, b = _key(onnx, plugin), _key(onnx, plugin)
    assert a == b and a.digest() == b.digest() and a.file_name() == b.file_name()
    # The hash is of the contents, not the path: a copy elsewhere keys the same.
    copy = tmp_path / "other" / "copy.onnx"
    copy.parent.mkdir()
    shutil.copy(onnx, copy)
    assert _key(copy, plugin).digest() == a.digest()
    import hashlib

    assert a.onnx_sha256 == hashlib.sha256(b"onnx-bytes").hexdigest()
    assert a.plugin_sha256 == hashlib.sha256(b"plugin-bytes").hexdigest()
    # Readable: the settings are in the name, then 12 hex digits of the key's hash.
    name = a.file_name()
    assert name.startswith(a.onnx_sha256[:8] + "_tensorrt-10.16.0_nvidia-geforce-rtx-4090-89_fp16_")
    assert name.endswith(f"_1x16x16-1x24x24-1x32x32_{a.digest()[:12]}.engine"), name


@pytest.mark.parametrize(
    "field,value",
    [
        ("builder", "tensorrt-rtx"),
        ("builder_version", "10.16.1"),
        ("gpu", "NVIDIA L4"),
        ("gpu", None),
        ("compute_capability", "9.0"),
        ("precision", "fp32"),
        ("profile", (PROFILE[0], PROFILE[1], (2, 1, 7, 32, 32))),
        ("profile", (PROFILE[0], (1, 1, 7, 24, 32), PROFILE[2])),
        ("plugin", None),
    ],
)
def test_each_field_changes_the_key(files, field, value):
    onnx, plugin = files
    base = _key(onnx, plugin)
    changed = _key(onnx, plugin, **{field: value})
    assert changed.digest() != base.digest() and changed.file_name() != base.file_name()


def test_file_contents_change_the_key(files):
    onnx, plugin = files
    base = _key(onnx, plugin)
    with open(plugin, "ab") as f:
        f.write(b"\0")
    assert _key(onnx, plugin).plugin_sha256 != base.plugin_sha256
    assert _key(onnx, plugin).file_name() != base.file_name()
    onnx.write_bytes(b"onnx-bytez")
    assert _key(onnx, plugin).onnx_sha256 != base.onnx_sha256


# --- hit, miss, storage (with a counting builder) ---------------------------------------------------


class Builder:
    def __init__(self, payload: bytes = b"E" * 1000) -> None:
        self.calls, self.payload = 0, payload

    def __call__(self) -> bytes:
        self.calls += 1
        return self.payload + bytes([self.calls])


def test_miss_builds_and_stores_then_hit_does_not_build(files, cache):
    onnx, plugin = files
    key, build = _key(onnx, plugin), Builder()
    first = ec.get_or_build(key, build, {"model_config": {"scale": 4}})
    assert first.built and build.calls == 1
    assert first.path == cache / key.file_name() and first.path.read_bytes() == b"E" * 1000 + b"\1"
    side = json.loads((cache / (key.file_name() + ".json")).read_text())
    assert side["key"] == key.fields() and side["key_sha256"] == key.digest()
    assert side["engine_bytes"] == 1001 and side["model_config"] == {"scale": 4}
    assert side["tensorrt_version"] == "10.16.0" and side["compute_capability"] == "8.9"
    assert side["profile"] == {"min": list(PROFILE[0]), "opt": list(PROFILE[1]), "max": list(PROFILE[2])}
    mtime = first.path.stat().st_mtime_ns
    second = ec.get_or_build(_key(onnx, plugin), build)
    assert not second.built and build.calls == 1 and second.path == first.path
    assert first.path.stat().st_mtime_ns == mtime
    # Another precision is another engine, beside the first.
    third = ec.get_or_build(_key(onnx, plugin, precision="fp32"), build)
    assert third.built and build.calls == 2 and third.path != first.path and first.path.is_file()


def test_damaged_engine_is_rebuilt(files, cache):
    onnx, plugin = files
    key, build = _key(onnx, plugin), Builder()
    path = ec.get_or_build(key, build).path
    path.write_bytes(path.read_bytes()[:-1] + b"X")  # same size, other bytes
    again = ec.get_or_build(key, build)
    assert again.built and build.calls == 2 and path.read_bytes().endswith(b"\2")


def test_failed_build_leaves_nothing(files, cache):
    onnx, plugin = files

    def boom() -> bytes:
        raise D3DError("builder failed")

    with pytest.raises(D3DError, match="builder failed"):
        ec.get_or_build(_key(onnx, plugin), boom)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_sidecar_is_ours_only_where_it_names_its_key(files, cache):
    onnx, plugin = files
    key = _key(onnx, plugin)
    entry = ec.get_or_build(key, Builder())
    side = json.loads(ec.sidecar_of(entry.path).read_text())
    # A copy under another name proves nothing: it is not listed (and so never deleted).
    shutil.copy(entry.path, cache / "renamed.engine")
    (cache / "renamed.engine.json").write_text(json.dumps({**side, "engine": "renamed.engine"}))
    assert [p for p, _ in ec.entries()] == [entry.path]


# --- `d3d cache list|clear` -------------------------------------------------------------------------


def test_cli_list_and_clear_keep_foreign_files(files, cache, capsys):
    onnx, plugin = files
    a = ec.get_or_build(_key(onnx, plugin), Builder()).path
    b = ec.get_or_build(_key(onnx, None, builder="tensorrt-rtx", gpu=None, compute_capability="SM89"), Builder()).path
    foreign = {
        "mine.engine": b"user's engine",
        "mine.engine.json": b'{"note": "not the cache\'s"}',
        "notes.txt": b"keep me",
    }
    for name, data in foreign.items():
        (cache / name).write_bytes(data)
    assert cli(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"2 cached engines in {cache}")
    assert a.name in out and b.name in out and "mine.engine" not in out
    assert "NVIDIA GeForce RTX 4090 (cc 8.9)" in out and "target SM89" in out and "fp16" in out
    assert "1x1x7x16x16 1x1x7x24x24 1x1x7x32x32" in out and "plugin none" in out
    assert cli(["cache", "list", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert sorted(r["path"] for r in records) == sorted([str(a), str(b)])
    assert all(r["size"] == 1001 and "key" in r for r in records)

    assert cli(["cache", "clear"]) == 0
    assert capsys.readouterr().out.strip() == f"removed 2 cached engines from {cache}"
    assert sorted(p.name for p in cache.iterdir()) == sorted(foreign)  # only ours went
    for name, data in foreign.items():
        assert (cache / name).read_bytes() == data
    assert cli(["cache", "clear"]) == 0
    assert capsys.readouterr().out.strip() == f"removed 0 cached engines from {cache}"


def test_cli_clear_of_a_read_only_cache_is_one_line(files, cache, capsys):
    """An engine cache that takes no changes (a shared, read-only one): one line naming the engine, never
    an internal error; nothing is removed."""
    import os
    import subprocess

    onnx, plugin = files
    engine = ec.get_or_build(_key(onnx, plugin), Builder()).path
    before = sorted(p.name for p in cache.iterdir())
    if os.geteuid() != 0:
        cache.chmod(0o555)
        undo = ["chmod", "755", str(cache)]
    elif subprocess.run(["chattr", "+i", str(cache)], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(cache)]
    else:
        pytest.skip("running as root on a file system without chattr +i: no read-only folder to make")
    try:
        assert cli(["cache", "clear"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"d3d: error: {engine}: cannot remove it"), err
        assert "internal error" not in err[0]
        assert sorted(p.name for p in cache.iterdir()) == before
    finally:
        subprocess.run(undo, check=True)


def test_cli_list_of_an_empty_cache(cache, capsys):
    assert cli(["cache", "list"]) == 0
    assert capsys.readouterr().out.strip() == f"0 cached engines in {cache}"
    assert cli(["cache", "list", "--json"]) == 0 and json.loads(capsys.readouterr().out) == []


def test_cli_cache_needs_an_action(capsys):
    assert cli(["cache"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("d3d: error:") and len(err.strip().splitlines()) == 1


# --- real builds: TensorRT-RTX on the CPU, with the plugin -------------------------------------------


@pytest.fixture(scope="module")
def rtx_inputs(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (the project's [rtx] extra)")
    from d3d.native_libs import trt_plugin_library

    lib = trt_plugin_library()
    if lib is None:
        pytest.skip("libd3d_trt_plugin.so is not built: `make cpp-test` builds it (or set D3D_TRT_PLUGIN)")
    import torch

    from d3d import D3Dnet
    from d3d.export import ExportOptions, export_onnx

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rtx") / "custom.onnx"
    proto = export_onnx(D3Dnet(nf=8, d3d_blocks=1, res_blocks=1).eval(), path, ExportOptions())
    assert any(n.op_type == "DeformConv3d" for n in proto.graph.node)
    return path, lib


def test_rtx_hit_and_miss(rtx_inputs, cache, tmp_path, monkeypatch):
    from d3d.export import rtx

    onnx, plugin = rtx_inputs
    calls = []
    real = rtx.build_rtx

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(rtx, "build_rtx", counting)
    first = ec.rtx_engine(onnx, PROFILE, plugin)
    assert first.built and len(calls) == 1
    engine = first.path.read_bytes()
    assert len(engine) > 100_000 and b"DeformConv3d" in engine  # a real engine, with our plugin layers
    assert first.info["key"]["builder"] == "tensorrt-rtx" and first.info["key"]["compute_capability"] == "SM89"
    mtime = first.path.stat().st_mtime_ns

    again = ec.rtx_engine(onnx, PROFILE, plugin)
    assert not again.built and len(calls) == 1 and again.path == first.path
    assert first.path.stat().st_mtime_ns == mtime and first.path.read_bytes() == engine

    # A changed plugin library (one byte appended: still loads) is another engine.
    changed = tmp_path / "libd3d_trt_plugin.so"
    changed.write_bytes(plugin.read_bytes() + b"\0")
    other = ec.rtx_engine(onnx, PROFILE, changed)
    assert other.built and len(calls) == 2 and other.path != first.path
    assert other.info["key"]["plugin_sha256"] != first.info["key"]["plugin_sha256"]

    # So is a changed profile.
    profile = (PROFILE[0], PROFILE[1], (1, 1, 7, 40, 40))
    third = ec.rtx_engine(onnx, profile, plugin)
    assert third.built and len(calls) == 3 and third.path not in (first.path, other.path)
    assert "1x16x16-1x24x24-1x40x40" in third.path.name
    assert sorted(p for p, _ in ec.entries()) == sorted([first.path, other.path, third.path])
    assert first.path.stat().st_mtime_ns == mtime  # the first engine was left alone
