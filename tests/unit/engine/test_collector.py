"""engine/collector.py: the collector is tuned while the service runs, and left as found."""

from __future__ import annotations

import gc

import pytest

from escalator.engine import collector


@pytest.fixture(autouse=True)
def _restore_collector():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_tuned_freezes_what_exists_and_collects_less_often_then_restores() -> None:
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    kept = [object() for _ in range(10)]  # noqa: F841 (alive across the freeze)
    with collector.tuned():
        assert gc.get_threshold() == (collector.YOUNG, collector.OLDER, collector.OLDER)
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_tuned_restores_even_when_the_block_raises() -> None:
    gc.set_threshold(500, 5, 5)
    with pytest.raises(RuntimeError), collector.tuned():
        raise RuntimeError("the service failed")
    assert gc.get_threshold() == (500, 5, 5)
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("why", ["setting off", "collector off"])
def test_tuned_leaves_the_collector_alone_when_off_or_managed_elsewhere(why: str) -> None:
    gc.set_threshold(700, 10, 10)
    enabled = why != "setting off"
    if why == "collector off":
        gc.disable()
    try:
        with collector.tuned(enabled):
            assert gc.get_threshold() == (700, 10, 10)
            assert gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_nested_blocks_tune_and_restore_once_whatever_order_they_end_in() -> None:
    gc.set_threshold(700, 10, 10)
    first, second = collector.tuned(), collector.tuned()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first service closes first
    assert gc.get_threshold() == (collector.YOUNG, collector.OLDER, collector.OLDER)
    assert gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
