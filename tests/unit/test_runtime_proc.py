"""Master CLI ``show proc`` parsing, on 2.6.12 transcripts."""

from __future__ import annotations

import pytest

from servicerouter.haproxy.master_cli import WorkerInfo, parse_show_proc, parse_uptime

HEAD = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
FRESH = (
    HEAD + "3157            master          0 [failed: 0]   0d00h05m36s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "3160            worker          0               0d00h05m36s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)
LINGERING = (
    HEAD + "3157            master          3 [failed: 1]   0d00h05m42s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "6445            worker          1               0d00h00m01s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "6211            worker          2               0d00h00m06s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)


def test_fresh() -> None:
    p = parse_show_proc(FRESH)
    assert (p.master_pid, p.reloads, p.failed_reloads, p.version) == (
        3157,
        0,
        0,
        "2.6.12-1+deb12u4",
    )
    assert p.workers == [WorkerInfo(3160, 0, "0d00h05m36s", "2.6.12-1+deb12u4")]
    assert p.old_workers == [] and p.worker_pids == [3160]


def test_old_workers_and_failed_reloads() -> None:
    p = parse_show_proc(LINGERING)
    assert (p.reloads, p.failed_reloads) == (3, 1)
    assert p.worker_pids == [6445]
    assert [w.pid for w in p.old_workers] == [6211]
    assert p.all_pids == [3157, 6445, 6211]


@pytest.mark.parametrize("text", ["", "Unknown command.\n", HEAD])
def test_no_master_line(text: str) -> None:
    with pytest.raises(ValueError):
        parse_show_proc(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("0d00h00m00s", 0), ("0d00h05m36s", 336), ("2d01h00m01s", 176401)]
)
def test_uptime(text: str, seconds: int) -> None:
    assert parse_uptime(text) == seconds
    assert WorkerInfo(1, 0, text, "v").uptime_seconds == seconds
