"""Comparability: results of different machines or accelerators are never compared silently."""

from __future__ import annotations

import pytest

from host.nightly import fingerprint
from host.nightly.outcome import compare_sets
from host.nightly.stats import Floors
from tests.unit.nightly_data import meta, result_set


def test_the_same_machine_compares() -> None:
    assert fingerprint.differences(meta(), meta(commit="other")) == []
    assert fingerprint.digest(fingerprint.fingerprint(meta())) == fingerprint.digest(
        fingerprint.fingerprint(meta(commit="other"))
    )


def test_tcg_against_kvm_is_refused_with_the_difference_named() -> None:
    with pytest.raises(fingerprint.Incomparable, match=r"accel: tcg -> kvm"):
        compare_sets([result_set(1)], [result_set(2, accel="kvm")], Floors())


def test_every_field_counts_and_allowing_names_them() -> None:
    other = meta(qemu="QEMU emulator version 8.2.0", cpu_model="Other CPU")
    diff = fingerprint.check(meta(), other, allow=True)
    assert diff == [
        "qemu: QEMU emulator version 7.2.0 -> QEMU emulator version 8.2.0",
        "cpu_model: Test CPU -> Other CPU",
    ]
    _, named = compare_sets(
        [result_set(1)], [result_set(2, cpu_model="Other CPU")], Floors(), allow_different=True
    )
    assert named == ["nightly: cpu_model: Test CPU -> Other CPU"]


def test_an_unknown_field_is_not_assumed_equal() -> None:
    old = meta()
    del old["host"]["cpu_model"]
    assert fingerprint.differences(old, meta()) == ["cpu_model: unknown -> Test CPU"]
