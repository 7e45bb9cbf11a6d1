"""TVM over RPC: a tracker and a server on 127.0.0.1, the model built here and run there.

Untuned (trials=0) to stay fast; the tracker and server start once for the module (each is
a TVM process: ~10-25 s on a busy 2-core machine).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tvm")
pytest.importorskip("tornado")  # TVM's tracker needs it (graphopt's test extra installs it)

from graphopt.backends import get_backend
from graphopt.backends.base import flat_torch_outputs, to_numpy_inputs
from graphopt.backends.compare import compare_on_backend
from graphopt.capture import trace
from graphopt.errors import BackendError, RecipeError

KEY = "graphopt-test"


@pytest.fixture(scope="module")
def tracker() -> Iterator[str]:
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=19190, port_end=19290, silent=True)
    server = Server(
        "127.0.0.1",
        port=19300,
        port_end=19400,
        key=KEY,
        tracker_addr=("127.0.0.1", tracker.port),
        silent=True,
    )
    address = f"127.0.0.1:{tracker.port}"
    try:
        _wait_for_key(address)
        yield address
    finally:
        server.terminate()
        tracker.terminate()


def _wait_for_key(address: str, timeout_s: float = 60.0) -> None:
    from tvm import rpc

    host, port = address.split(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if KEY in (rpc.connect_tracker(host, int(port)).summary().get("queue_info") or {}):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the RPC server never registered {KEY!r} at {address}")


def tiny() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5)).eval()
    return model, (torch.randn(1, 3, 8, 8),)


def test_a_model_runs_on_the_remote_device_and_the_report_names_it(tracker: str) -> None:
    model, inputs = tiny()
    gm = trace(model, inputs)
    backend = get_backend("tvm", rpc={"tracker": tracker, "key": KEY, "device_runs": 2})
    compiled = backend.compile(gm, inputs)
    (out,) = compiled.run(to_numpy_inputs(inputs))
    (expected,) = flat_torch_outputs(gm(*inputs))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    device = compiled.info["device"]
    assert device["rpc_key"] == KEY and device["tracker"] == tracker
    assert device["remote_cpu"] and device["remote_triple"]  # the remote described itself
    assert device["remote_cpu"] in device["target"]
    assert compiled.info["device_ms"] > 0 and compiled.info["tuned"] is False
    with pytest.raises(BackendError, match="expected shape"):
        compiled.run([np.zeros((2, 3, 8, 8), np.float32)])


def test_the_comparison_times_both_models_remotely(tracker: str) -> None:
    model, inputs = tiny()
    gm = trace(model, inputs)
    backend = get_backend("tvm", rpc={"tracker": tracker, "key": KEY, "device_runs": 1})
    result = compare_on_backend(backend, {"a": gm, "b": gm}, inputs, warmup=1, runs=2)
    for entry in result.results.values():
        assert entry.max_rel_diff < 1e-4 and entry.latency.median_ms > 0
        assert entry.info["device"]["rpc_key"] == KEY and "round trip" in entry.info["latency_note"]


def test_a_compression_report_names_the_remote_device(tracker: str, tmp_path: Path) -> None:
    from graphopt.passes import get_pass
    from graphopt.runner import compress

    model, inputs = tiny()
    backend = get_backend("tvm", rpc={"tracker": tracker, "key": KEY, "device_runs": 1})
    run = compress(model, inputs, [get_pass("fold_batchnorm")], backends=[backend], runs=2)
    run.report.write(tmp_path)  # validated against the shipped schema (tests/conftest.py)
    (latency,) = json.loads((tmp_path / "report.json").read_text())["latency"]
    assert latency["backend"] == "tvm" and latency["info"]["device"]["rpc_key"] == KEY
    assert latency["info"]["device_ms"] > 0


def test_a_key_no_server_registered_is_one_error_not_a_hang(tracker: str) -> None:
    model, inputs = tiny()
    backend = get_backend("tvm", rpc={"tracker": tracker, "key": "no-such-board"})
    with pytest.raises(BackendError, match=rf"no device 'no-such-board' \(registered: {KEY}\)"):
        backend.compile(trace(model, inputs), inputs)


def test_an_unreachable_tracker_is_one_error() -> None:
    model, inputs = tiny()
    backend = get_backend("tvm", rpc={"tracker": "127.0.0.1:9", "key": KEY})
    with pytest.raises(BackendError, match=r"cannot reach the TVM RPC tracker 127.0.0.1:9"):
        backend.compile(trace(model, inputs), inputs)


@pytest.mark.parametrize(
    ("rpc", "message"),
    [
        ({"tracker": "localhost", "key": KEY}, r"tvm.rpc: must be a mapping of tracker, key"),
        ({"tracker": "localhost:9190"}, r"tvm.rpc: must be a mapping of tracker, key"),
        ({"tracker": "localhost:9190", "key": KEY, "port": 1}, r"tvm.rpc has no option 'port'"),
    ],
)
def test_bad_rpc_options_name_the_option(rpc: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        get_backend("tvm", rpc=rpc)
