"""Slot allocation: two labs never hold the same slot, whatever the timing of a release."""

from __future__ import annotations

import fcntl
import os

import pytest

from host import slots


@pytest.fixture(autouse=True)
def _runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKBED_RUNTIME_DIR", str(tmp_path))


def _race_at_flock(lab: str, unlink, monkeypatch) -> tuple[list, bool]:
    """Run `unlink` (something that unlinks the first slot's lock file) just after the next
    lab named `lab` opened that file and just before it takes the lock, then allocate that
    lab and a third: what `unlink` returned (once it ran), and whether the two labs got
    different slots."""
    real_flock = fcntl.flock
    raced: list = []

    def flock(fd, op):
        monkeypatch.setattr(slots.fcntl, "flock", real_flock)  # once; `unlink` may lock too
        raced.append(unlink())
        return real_flock(fd, op)

    monkeypatch.setattr(slots.fcntl, "flock", flock)
    second = slots.allocate_slot(lab, 0)
    third = slots.allocate_slot(lab, 0)
    try:
        return raced, second.number != third.number
    finally:
        second.release()
        third.release()


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
    raced, distinct = _race_at_flock("lab", holder.release, monkeypatch)
    assert raced and distinct


def _abandon(slot: slots.Slot) -> None:
    """What SIGKILL does to an owner's slot: the lock goes with the process, the file stays."""
    os.close(slot.fd)
    slot.fd = -1


def test_an_abandoned_slot_file_is_removed_and_a_held_one_kept():
    held = slots.allocate_slot("live", 0)
    dead = slots.allocate_slot("killed", 0)
    _abandon(dead)
    try:
        assert slots.remove_unheld_slots() == [dead.path]
        assert not dead.path.exists()
        assert held.path.exists()
        assert slots.remove_if_unheld(held.path) is False
    finally:
        held.release()


def test_the_control_a_slot_file_left_alone_stays():
    """Without the sweep an abandoned file is there for good: the removal above is not a
    side effect of allocation or release."""
    dead = slots.allocate_slot("killed", 0)
    _abandon(dead)
    other = slots.allocate_slot("other", 0)
    other.release()
    assert dead.path.exists()


def test_a_removed_file_does_not_let_two_labs_share_its_slot(monkeypatch):
    """The sweep removes an abandoned file just after a new lab opened it: the new lab must not
    take the slot on the unlinked file (a third would take the same number on a fresh one)."""
    dead = slots.allocate_slot("killed", 0)
    _abandon(dead)
    raced, distinct = _race_at_flock(
        "killed", lambda: slots.remove_if_unheld(dead.path), monkeypatch
    )
    assert raced == [True] and distinct
