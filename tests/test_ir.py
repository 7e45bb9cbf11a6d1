"""IR helpers: the garbage-collector pause used around capture and pruning."""

from __future__ import annotations

import gc

import pytest

from graphopt.ir import paused_gc


def test_paused_gc_pauses_nests_and_restores() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block does not end the outer pause
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()  # restored on errors too


def test_paused_gc_leaves_a_disabled_collector_off() -> None:
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
