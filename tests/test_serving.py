"""d3d serve and the triton backend, on loopback: a real tritonserver (the nvidia-pytriton wheel's, unpacked
by ``make setup``) serving a tiny random-init checkpoint on 32x32 frames. The shared server runs the
repository ``d3d serve --write-only --platform python`` writes; ``d3d serve`` itself runs in the resume test.
The repositories written for a production Triton are checked in test_serving_repositories.py, the window
plan both sides follow in test_scenes.py.

References: the local ONNX Runtime runner (same model, same thread count) through the local pipeline's
network stage; outputs must be equal bit for bit. Ports are the kernel's free ones; readiness and freed
sequences are found by polling the server's endpoints, never by sleeping. Under CI=true a missing server
binary fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import numpy as np
import pytest
from conftest import serve_extra, write_frames

from d3d.cli import main as cli
from d3d.errors import SDKMissing

FRAME = (1, 32, 32)
POLL_S = 0.1


def _server_or_skip():
    from d3d.runtime.serving import find_server

    try:
        return find_server()
    except SDKMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no tritonserver: {exc}")
        pytest.skip(str(exc))


grpcclient = serve_extra("tritonclient.grpc")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError as exc:
        return getattr(exc, "code", 0) or 0, ""


def _poll(what: str, check, process: subprocess.Popen | None = None, timeout: float = 120.0):
    """Polls ``check()`` until it returns a true value (a state, not a time); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"{what}: d3d serve exited {process.returncode}: {err.strip()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached after {timeout:g} s")
        time.sleep(POLL_S)


class Serve:
    """A ``d3d serve`` process on free loopback ports."""

    def __init__(self, checkpoint, *extra: str) -> None:
        from d3d.runtime.serving import free_port

        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        cmd = [sys.executable, "-m", "d3d.cli", "serve", "--checkpoint", str(checkpoint), "--threads", "1",
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
               *extra]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.result: tuple[int, str, str] | None = None
        _poll("readiness", lambda: _get(self.base("/v2/health/ready"))[0] == 200, self.process)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def base(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def gauge(self, name: str) -> float:
        _, text = _get(f"http://127.0.0.1:{self.metrics}/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

    def stop(self) -> tuple[int, str, str]:
        if self.result is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            out, err = self.process.communicate(timeout=120)
            self.result = (self.process.returncode, out, err)
        return self.result


class Written:
    """The production repository ``d3d serve --write-only --platform python`` writes, run by the wheel's
    tritonserver with this venv added as the stub's Python environment (a container has d3d-trt
    installed instead: the one change)."""

    def __init__(self, repo, install) -> None:
        from d3d.runtime.serving import MODEL_NAME, Ports, Server, free_port

        config = repo / MODEL_NAME / "config.pbtxt"
        env = f'{{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{sys.prefix}" }} }}, '
        config.write_text(config.read_text().replace("parameters [ ", "parameters [ " + env))
        self.server = Server(install, repo, Ports(free_port(), free_port(), free_port()), exit_timeout=2)
        self.http, self.grpc, self.metrics = self.server.ports.http, self.server.ports.grpc, self.server.ports.metrics
        self.server.start()
        _poll("readiness", self.server.ready, self.server.process)

    url = Serve.url
    base = Serve.base
    gauge = Serve.gauge


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    install = _server_or_skip()
    repo = tmp_path_factory.mktemp("written") / "repo"
    assert cli(["serve", "--write-only", str(repo), "--checkpoint", str(tiny_checkpoint), "--threads", "1",
                "--idle-timeout", "3", "--max-frame-pixels", "4096"]) == 0  # fmt: skip
    s = Written(repo, install)
    yield s
    assert s.server.stop() == 0


@pytest.fixture(scope="module")
def local(tiny_checkpoint):
    """The local runner the server runs: ONNX Runtime, custom op, one thread."""
    from d3d.runtime.backends import create_runner, get_backend
    from d3d.runtime.models import resolve_source

    backend = get_backend("onnxruntime")
    runner = create_runner(backend, resolve_source(checkpoint=tiny_checkpoint), backend.options(threads=1))
    yield runner
    runner.close()


def _frames(seed: int, n: int, cuts=()) -> list:
    from d3d.runtime.frames import InFrame

    rng = np.random.default_rng(seed)
    return [InFrame(i, rng.random(FRAME, dtype=np.float32), cut=i in cuts) for i in range(n)]


def _run(runner, frames, done: int = 0) -> dict[int, np.ndarray | None]:
    from d3d.runtime.windows import UpscaleOptions, _network

    out = {}
    for frame, y in _network(iter(frames), runner, UpscaleOptions(done=done), [0.0]):
        assert frame.index not in out
        out[frame.index] = y
    assert list(out) == sorted(out)  # in frame order
    return out


def _remote(url: str):
    from d3d.runtime.backends import create_runner, get_backend
    from d3d.runtime.models import ModelSource

    backend = get_backend("triton")
    return create_runner(backend, ModelSource("random"), backend.options(url=url))


# --- Streams against the server ---------------------------------------------------------------------


def test_eight_concurrent_streams_equal_the_local_run(server, local):
    """Eight videos at once (lengths, cuts and a resumed one differ), every frame equal to the local run."""
    cases = [(s, 5 + s, {3} if s % 3 == 0 else set(), 2 if s == 5 else 0) for s in range(8)]
    results: dict[int, object] = {}

    def client(case):
        seed, n, cuts, done = case
        runner = _remote(server.url)
        try:
            results[seed] = _run(runner, _frames(seed, n, cuts), done)
        except BaseException as exc:
            results[seed] = exc
        finally:
            runner.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed, n, cuts, done in cases:
        got = results[seed]
        assert not isinstance(got, BaseException), got
        want = _run(local, _frames(seed, n, cuts), done)
        assert list(got) == list(range(n))
        for i in range(n):
            if i < done:
                assert got[i] is None  # kept by the resumed run: the server computed nothing for it
            else:
                assert got[i].dtype == np.float32 and np.array_equal(got[i], want[i]), (seed, i)
    assert server.gauge("d3d_open_sequences") == 0 and server.gauge("d3d_ring_bytes") == 0


KILLED_CLIENT = textwrap.dedent(
    """
    import os, queue, signal, sys
    import numpy as np
    import tritonclient.grpc as g
    url, seq = sys.argv[1], int(sys.argv[2])
    c, q = g.InferenceServerClient(url), queue.Queue()
    c.start_stream(callback=lambda result, error: q.put(error))
    for i in range(3):
        ins = [g.InferInput("FRAME", [1, 32, 32], "FP32"), g.InferInput("INDEX", [1], "INT64"),
               g.InferInput("CUT", [1], "BOOL")]
        ins[0].set_data_from_numpy(np.full((1, 32, 32), 0.5, np.float32))
        ins[1].set_data_from_numpy(np.array([i], np.int64))
        ins[2].set_data_from_numpy(np.array([False]))
        c.async_stream_infer("d3dnet", ins, sequence_id=seq, sequence_start=i == 0)
    for i in range(3):
        assert q.get(timeout=60) is None
    print("open", flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)  # mid-video: no END ever comes
    """
)


def test_a_killed_client_leaves_the_others_intact_and_its_sequence_freed(server, local):
    from d3d.runtime.serving import MODEL_NAME

    seq = 987654321
    frames = _frames(100, 9, {4})
    killer = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, server.url, str(seq)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert killer.stdout.readline().strip() == "open"  # its sequence holds 3 frames now
    killed = []

    def items():  # a stream in progress while the other client dies mid-video
        for f in frames:
            yield f
            if f.index == 3:
                killer.stdin.write("die\n")
                killer.stdin.flush()
                killed.append(killer.wait(60))

    runner = _remote(server.url)
    try:
        got = _run(runner, items())
    finally:
        runner.close()
    assert killed == [-signal.SIGKILL]
    want = _run(local, frames)
    assert all(np.array_equal(got[i], want[i]) for i in range(len(frames)))
    # Freed after the idle timeout (3 s here): by Triton's batcher and by the model's ring sweeper.
    _poll("sequence freed", lambda: server.gauge("d3d_open_sequences") == 0 and server.gauge("d3d_ring_bytes") == 0)
    client = grpcclient.InferenceServerClient(server.url)
    with pytest.raises(grpcclient.InferenceServerException):
        client.infer(MODEL_NAME, _inputs(np.zeros(FRAME, np.float32), 3), sequence_id=seq)
    assert _get(server.base("/v2/health/ready"))[0] == 200


def _inputs(frame: np.ndarray, index: int, dtype: str = "FP32", shape=None):
    ins = [
        grpcclient.InferInput("FRAME", list(frame.shape), dtype),
        grpcclient.InferInput("INDEX", [1], "INT64"),
        grpcclient.InferInput("CUT", [1], "BOOL"),
    ]
    ins[0].set_data_from_numpy(frame)
    if shape is not None:
        ins[0].set_shape(shape)  # declares a size the data does not have
    ins[1].set_data_from_numpy(np.array([index], np.int64))
    ins[2].set_data_from_numpy(np.array([False]))
    return ins


def test_malformed_requests_get_an_error_and_the_server_keeps_serving(server, local):
    from d3d.runtime.serving import MODEL_NAME

    client = grpcclient.InferenceServerClient(server.url)
    good = np.random.default_rng(7).random(FRAME, dtype=np.float32)

    def refused(inputs, seq, start=False, words=None):
        with pytest.raises(grpcclient.InferenceServerException) as info:
            client.infer(MODEL_NAME, inputs, sequence_id=seq, sequence_start=start)
        if words:
            assert words in info.value.message(), info.value.message()

    refused(_inputs(good.astype(np.float64), 0, "FP64"), 11, True)  # wrong dtype
    refused(_inputs(good[0], 0), 12, True)  # wrong rank
    refused(_inputs(np.zeros((3, 32, 32), np.float32), 0), 13, True, "3 channels")  # wrong shape
    refused(_inputs(np.zeros((1, 80, 80), np.float32), 0), 14, True, "4096 pixels")  # above --max-frame-pixels
    refused(_inputs(good, 0, shape=[1, 100000, 100000]), 15, True)  # huge declared size, 4 KB sent
    refused(_inputs(good, 0), 16)  # a sequence never started
    # Frames of one sequence out of order, and a frame whose size changes: refused, the sequence goes on.
    client.infer(MODEL_NAME, _inputs(good, 0), sequence_id=17, sequence_start=True)
    refused(_inputs(good, 2), 17, words="frame 2 arrived where frame 1 was expected")
    refused(_inputs(np.zeros((1, 16, 16), np.float32), 1), 17, words="the sequence's frames are 32x32x1")
    r = client.infer(MODEL_NAME, _inputs(good, 1), sequence_id=17)
    assert r.as_numpy("OUTPUT_INDEX").tolist() == []  # frames 0 and 1 need frame 3 before any window is complete
    # Still serving: a whole video through the same server equals the local run.
    frames = _frames(8, 4)
    runner = _remote(server.url)
    try:
        got = _run(runner, frames)
    finally:
        runner.close()
    want = _run(local, frames)
    assert all(np.array_equal(got[i], want[i]) for i in range(4))
    assert _get(server.base("/v2/health/ready"))[0] == 200


def test_bench_measures_streams_against_the_server(server, tiny_checkpoint, tmp_path, capsys):
    report = tmp_path / "bench.json"
    assert cli(["bench", "--backends", "triton", "--url", server.url, "--checkpoint", str(tiny_checkpoint),
                "--threads", "1", "--sizes", "32x32", "--streams", "1", "3", "--stream-frames", "4",
                "--pipeline-frames", "0", "--json", str(report)]) == 0  # fmt: skip
    rows = json.loads(report.read_text())["streams"]
    assert [(r["streams"], r["frames"]) for r in rows] == [(1, 4), (3, 12)]
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["frames_per_s"] > 0 and r["local_frames_per_s"] > 0
        assert r["backend"].startswith("triton d3dnet (server: onnxruntime")
    assert "all streams together" in capsys.readouterr().out


# --- The command lines ------------------------------------------------------------------------------


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("d3d: error: "), err
    return lines[0]


def test_serve_refuses_a_taken_port_and_a_missing_binary(server, tiny_checkpoint, tmp_path, capsys):
    from d3d.runtime.serving import free_port

    assert cli(["serve", "--checkpoint", str(tiny_checkpoint), "--grpc-port", str(server.grpc),
                "--http-port", str(free_port()), "--metrics-port", str(free_port())]) == 1  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert f"--grpc-port {server.grpc}: 127.0.0.1:{server.grpc} is taken" in line, line
    assert cli(["serve", "--checkpoint", str(tiny_checkpoint), "--tritonserver", str(tmp_path / "nope")]) == 2
    assert "no tritonserver binary" in _one_error_line(capsys.readouterr().err)


def test_upscale_through_the_server_equals_the_local_run_and_resumes_after_the_server_stops(
    server, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    """A server stopped mid-video ends the client in one line; --resume completes the output against
    another server of the same model (other ports: the address is not part of the fingerprint); every
    frame equals the local run's."""
    from d3d.runtime import resume

    _server_or_skip()
    frames = tmp_path / "in"
    write_frames(frames, 16, size=(32, 32))
    local_out, remote_out = tmp_path / "local", tmp_path / "remote"
    # --serial: the writer's stop comes before the network stage sends frame 3 + 3 + 4 (in flight) + 1.
    common = ["-q", "--y-only", "--scene-cuts", "off", "--serial"]
    assert cli(["upscale", str(frames), "--checkpoint", str(tiny_checkpoint), "--threads", "1",
                "-o", str(local_out), *common]) == 0  # fmt: skip
    capsys.readouterr()
    first = Serve(tiny_checkpoint, "--exit-timeout", "0")
    written = []
    write = resume.ResumableSink.write

    def write_then_stop(self, frame):
        write(self, frame)
        written.append(frame.index)
        if len(written) == 3:  # the server goes away mid-video
            first.stop()

    monkeypatch.setattr(resume.ResumableSink, "write", write_then_stop)
    try:
        rc = cli(["upscale", str(frames), "--backend", "triton", "--url", first.url, "-o", str(remote_out), *common])
    finally:
        stopped, _, err = first.stop()
    # d3d serve's clean shutdown on SIGTERM: exit 0, one line (after the start-up's own log lines, if any).
    assert stopped == 0 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("d3d serve: stopped on SIGTERM"), err
    assert rc == 1
    assert "Triton server" in _one_error_line(capsys.readouterr().err)
    assert not remote_out.exists()
    # Frames whose answers were already on their way when the server stopped are still written, so how
    # many were kept depends on timing (3 or more): the resume must report exactly those kept.
    kept = len(written)
    assert 3 <= kept < 16
    monkeypatch.setattr(resume.ResumableSink, "write", write)
    assert cli(["upscale", str(frames), "--backend", "triton", "--url", server.url, "-o", str(remote_out),
                "--resume", *common]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"resume: {kept} of 16 frames already done" in out
    assert "model: the server's (checkpoint sha256" in out
    names = sorted(p.name for p in local_out.glob("frame_*.png"))
    assert len(names) == 16 and names == sorted(p.name for p in remote_out.glob("frame_*.png"))
    for name in names:
        assert (local_out / name).read_bytes() == (remote_out / name).read_bytes(), name


def test_triton_backend_options_are_checked(capsys):
    assert cli(["upscale", "--backend", "triton", "--checkpoint", "x.pth.tar", "-o", "out"]) == 1
    assert "the server's model runs" in _one_error_line(capsys.readouterr().err)
    from d3d.errors import D3DError
    from d3d.runtime.backends import get_backend

    b = get_backend("triton")
    for fields, words in [({"threads": 2}, "the server decides"), ({"tile": 64}, "--tile"),
                          ({"device": "cpu"}, "the server decides")]:  # fmt: skip
        with pytest.raises(D3DError, match=words):
            b.options(**fields).validate()
    from d3d.runtime.backends import backend_names

    # d3d eval and d3d serve's own --backend run the model in-process: the remote backend is not theirs.
    assert "triton" in backend_names() and "triton" not in backend_names(local=True)
