"""Freed memory kept for the next scan of a batch (glibc), and given back when the batch ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from lung_tumor.heap import freed_memory_kept, glibc

MB = 1 << 20


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / MB


def resident_after_a_freed_array(size_mb: int = 200) -> float:
    """Resident MB gained by allocating, touching and freeing an array of ``size_mb``."""
    before = resident_mb()
    array = np.ones(size_mb * MB // 8)
    assert array.sum() == array.size  # touched
    del array
    return resident_mb() - before


@pytest.mark.skipif(glibc() is None, reason="the allocator setting is glibc's")
def test_a_freed_array_is_kept_inside_the_block_and_given_back_after() -> None:
    assert resident_after_a_freed_array() < 50  # by default glibc returns a large block at once
    with freed_memory_kept(scans=2) as applied:
        assert applied
        kept = resident_after_a_freed_array()
        assert kept > 150  # kept for reuse
        again = resident_after_a_freed_array()
        assert again < 50  # the next array took the kept pages: no new memory
        held = resident_mb()
    assert resident_mb() < held - 150  # given back at the end of the block
    assert resident_after_a_freed_array() < 50  # glibc's defaults again


def test_one_scan_and_elsewhere_than_glibc_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    with freed_memory_kept(scans=1) as applied:
        assert not applied
        assert resident_after_a_freed_array() < 50  # glibc's defaults: returned at once
    monkeypatch.setattr("lung_tumor.heap.glibc", lambda: None)
    with freed_memory_kept(scans=2) as applied:
        assert not applied


def batches_keeping_freed_memory(monkeypatch: pytest.MonkeyPatch, module: str) -> list[bool]:
    """Record each block of ``module`` (which imported :func:`freed_memory_kept`) that keeps freed memory: each block
    over a batch of two scans or more."""
    entered: list[bool] = []

    @contextmanager
    def recorded(scans: int) -> Iterator[bool]:
        with freed_memory_kept(scans) as applied:
            if scans > 1:
                entered.append(applied)
            yield applied

    monkeypatch.setattr(f"{module}.freed_memory_kept", recorded)
    return entered
