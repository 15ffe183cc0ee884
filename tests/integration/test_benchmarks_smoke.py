"""The benchmarks at tiny sizes: each one runs and reports rows with its columns, so they
never rot. No timing asserts (the numbers live in docs/benchmarks.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from benchmarks.__main__ import run

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")]

EXPECTED = {
    "runtime": {"runtime": ["mode", "batch", "commands/s"]},
    "scale": {"scale_inprocess": ["apps", "total ms"],
              "scale_daemon": ["apps", "daemon peak RSS MB", "HAProxy reload ms (median)"],
              "scale_plan": ["apps", "p50 µs", "p99 µs"]},
    "convergence": {"convergence": ["strategy", "rate/s", "p50 ms", "p99 ms", "max ms"]},
    "reloads": {"reloads": ["strategy", "replacements", "reloads/1000"]},
    "zeroloss": {"zeroloss": ["strategy", "phase", "requests", "failed", "p99 ms"]},
    "tail": {"tail": ["phase", "p99 ms", "max ms", "daemon CPU %", "/healthz max ms"],
             "tail_memory": ["daemon peak RSS MB", "HAProxy worker RSS MB"]},
    "subscribers": {"subscribers": ["subscribers", "simulator CPU ms/event",
                                    "lag to last p99 ms"]},
    "slots": {"slots": ["min free", "increment", "slots", "haproxy -c ms", "worker RSS MB"]},
    "newapp": {"newapp": ["mode", "apps before", "routed", "p50 ms", "p99 ms",
                          "HAProxy reloads"],
               "optionchange": ["mode", "apps before", "option changes", "routed", "p50 ms",
                                "HAProxy reloads"]},
    "vhosts": {"vhosts": ["vhosts", "routing", "host", "p50 ms", "p99 ms"]},
    "zeroloss_range": {"zeroloss_range": ["strategy", "phase", "requests", "failed",
                                          "reloads"]},
    "certs": {"certs": ["files", "first gather ms (one haproxy -c)", "unchanged gather ms"]},
}
# The churn-heavy zero-loss run is smoked with one strategy to keep this under a minute.
STRATEGIES = {"zeroloss": ["runtime"]}


def test_every_benchmark_is_smoked() -> None:
    from benchmarks.__main__ import DEFAULT, EXTRA

    assert set(EXPECTED) == {*DEFAULT, *EXTRA}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_benchmark_runs_and_reports(name: str, tmp_path: Path) -> None:
    tables = run([name], quick=True, strategies=STRATEGIES.get(name), tmp=tmp_path)
    got = {t.name: t for t in tables}
    assert set(got) == set(EXPECTED[name])
    for table_name, columns in EXPECTED[name].items():
        table = got[table_name]
        assert table.rows, f"{table_name} reported no rows"
        for col in columns:
            assert col in table.columns
            assert all(col in row for row in table.rows), (table_name, col, table.rows)
        assert table.markdown().startswith("### ")
    if name == "zeroloss_range":  # the point of the range mode: a new app, no reload
        assert [row["reloads"] for row in got[name].rows] == [0], got[name].rows
    if name == "newapp":  # every option change routed; in range mode without a reload
        rows = got["optionchange"].rows
        assert all(r["routed"] == r["option changes"] for r in rows), rows
        assert [r["HAProxy reloads"] for r in rows if r["mode"] == "range"] == [0], rows
