"""ChangeLog: which backends changed after a reader began, kept only as long as needed."""

from __future__ import annotations

from servicerouter.changelog import KEEP_AT_LEAST, ChangeLog


def test_a_reader_sees_what_changed_after_it_began_however_much_changes_meanwhile() -> None:
    log = ChangeLog()
    log.record({"old", "again"})
    seq = log.begin()
    log.record({"a", "again"})
    later = {f"n{i}" for i in range(5 * KEEP_AT_LEAST)}
    for name in sorted(later):  # enough to look for what nobody needs, several times
        log.record({name})
    assert log.changed_since("a", seq) and log.changed_since("again", seq)
    assert not log.changed_since("old", seq) and not log.changed_since("never", seq)
    assert log.since(seq) == {"a", "again", *later}
    other = log.begin()  # a second reader, later: sees only what came after it
    log.record({"z"})
    assert log.since(other) == {"z"} and log.since(seq) == {"a", "again", "z", *later}
    log.end(seq)
    log.end(other)
    for i in range(5 * KEEP_AT_LEAST):
        log.record({f"m{i}"})
    assert len(log) <= 2 * KEEP_AT_LEAST  # what the readers needed is gone with them
    last = log.begin()
    assert log.since(last) == set()
    log.record({"y"})
    assert log.since(last) == {"y"} and log.changed_since("y", last)


def test_without_a_reader_the_log_stays_small_whatever_changes() -> None:
    """Apps created and deleted at runtime (range mode) with no reload to clear the log:
    it kept one entry per backend name ever changed."""
    log = ChangeLog()
    for i in range(50 * KEEP_AT_LEAST):
        log.record({f"/ci/build{i}"})
    assert len(log) <= 2 * KEEP_AT_LEAST
