"""The TVM tuning state file: concurrent runs sharing a work dir never collide or corrupt it.

Only the writer is tested here; it needs no TVM (``graphopt.backends.tvm.tuning`` imports it
lazily).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from graphopt.backends.tvm import tuning


def test_state_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    state = {"trials": 64, "target": "llvm", "tasks": ["a", "b"]}
    tuning._write_state(tmp_path, state)
    assert tuning._read_state(tmp_path) == state
    assert [p.name for p in tmp_path.iterdir()] == [tuning._STATE_FILE]


def test_concurrent_writers_never_collide(tmp_path: Path) -> None:
    writers, rounds = 8, 25
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait()
                tuning._write_state(tmp_path, {"trials": i, "round": r, "pad": "x" * 4096})
        except BaseException as exc:  # a fixed temp name fails here: renamed away by another
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = json.loads((tmp_path / tuning._STATE_FILE).read_text())
    assert final["round"] == rounds - 1 and 0 <= final["trials"] < writers
    assert [p.name for p in tmp_path.iterdir()] == [tuning._STATE_FILE]
