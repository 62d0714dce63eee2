"""The garbage collector's settings at start-up (realtime/garbage.py), and its pauses."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from django.test import override_settings
from prometheus_client import REGISTRY

from realtime import garbage


@pytest.fixture
def collector() -> Iterator[None]:
    """Whatever a test changes of the process's collector is put back."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if garbage._observe in gc.callbacks:
        gc.callbacks.remove(garbage._observe)


def pauses(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "chat_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


@override_settings(GC_FREEZE=True, GC_THRESHOLDS=[700, 10, 100])
def test_start_up_freezes_what_is_loaded_and_spaces_full_collections(collector: None) -> None:
    assert gc.get_freeze_count() == 0
    garbage.tune()
    assert gc.get_freeze_count() > 1000  # the modules, Django's objects
    assert gc.get_threshold() == (700, 10, 100)
    # A full collection is seen as a pause of generation 2.
    before = pauses(2)
    gc.collect()
    assert pauses(2) == before + 1


@override_settings(GC_FREEZE=False, GC_THRESHOLDS=[1000, 20, 30])
def test_freezing_can_be_turned_off(collector: None) -> None:
    garbage.tune()
    garbage.tune()  # at most one observer however often it runs
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (1000, 20, 30)
    assert gc.callbacks.count(garbage._observe) == 1
    before = pauses(0)
    gc.collect(0)
    assert pauses(0) == before + 1
