"""Bytewax epochs of ``riskstream run``: the snapshot interval only when snapshots are taken."""

from __future__ import annotations

from datetime import timedelta

from dataflows.cli import EPOCH_WITHOUT_RECOVERY, epoch_interval


def test_epoch_interval_when_recovering_is_the_snapshot_interval():
    assert epoch_interval(1.5, recovering=True) == timedelta(seconds=1.5)


def test_epoch_interval_without_recovery_is_a_day_whatever_the_snapshot_interval():
    assert epoch_interval(5.0, recovering=False) == EPOCH_WITHOUT_RECOVERY == timedelta(days=1)
