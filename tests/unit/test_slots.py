"""Slot allocation: two labs never hold the same slot, whatever the timing of a release."""

from __future__ import annotations

import fcntl

import pytest

from host import slots


@pytest.fixture(autouse=True)
def _runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKBED_RUNTIME_DIR", str(tmp_path))


def test_two_live_labs_get_different_slots():
    a, b = slots.allocate_slot("same-name", 0), slots.allocate_slot("same-name", 0)
    try:
        assert a.number != b.number
    finally:
        a.release()
        b.release()


def test_a_release_between_open_and_flock_does_not_hand_out_a_slot_twice(monkeypatch):
    """A holder releases (unlinks its lock file, then closes it) just after a new lab opened
    that file and just before it takes the lock: the new lab must not take the slot on the
    unlinked file, or a third lab would create a fresh file and take the same slot too."""
    holder = slots.allocate_slot("lab", 0)
    real_flock = fcntl.flock
    raced = []

    def flock(fd, op):
        if not raced:
            raced.append(True)
            holder.release()
        return real_flock(fd, op)

    monkeypatch.setattr(slots.fcntl, "flock", flock)
    second = slots.allocate_slot("lab", 0)
    third = slots.allocate_slot("lab", 0)
    try:
        assert raced and second.number != third.number
    finally:
        second.release()
        third.release()
