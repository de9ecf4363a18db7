"""The drift guard, in-process: repairs count within a minute, more than the limit is a fight that
pauses repair for the backoff, and it resumes after."""

from __future__ import annotations

from nodeagent.agent.drift import DriftGuard


def test_repairs_under_the_limit_never_pause() -> None:
    """Up to the limit of repairs a minute: each is repaired, nothing pauses."""
    guard = DriftGuard(limit=3, backoff=300)
    assert [False, False, False] == [guard.repaired(t) for t in (0.0, 10.0, 20.0)]
    assert not guard.paused(21.0)


def test_a_fight_pauses_repair_for_the_backoff() -> None:
    """One repair more than the limit within a minute is a fight: paused for the backoff, then not."""
    guard = DriftGuard(limit=3, backoff=300)
    assert [False, False, False, True] == [guard.repaired(t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert (True, True, False) == (guard.paused(3.0), guard.paused(302.9), guard.paused(303.0))


def test_old_repairs_no_longer_count() -> None:
    """Repairs spread out over more than a minute are not a fight."""
    guard = DriftGuard(limit=2, backoff=300)
    assert [False, False, False, False] == [guard.repaired(t) for t in (0.0, 40.0, 70.0, 110.0)]
