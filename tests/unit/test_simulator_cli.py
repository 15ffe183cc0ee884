"""``servicerouter simulate`` argument handling: one clear line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from servicerouter.simulator.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--listen", "nope"], "expected HOST:PORT"),
        (["--executor", "docker"], "invalid choice"),
        (["--port-range", "32000-31000"], "expected LO-HI"),
        (["--heartbeat-interval", "-1"], "expected seconds >= 0"),
        (["--credentials", "nocolon"], "USER:PASS"),
        (["--bogus"], "unrecognized arguments"),
        (["--apps", "/nonexistent/apps.json"], "--apps /nonexistent/apps.json"),
    ],
)
def test_bad_flags_give_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert err.startswith("servicerouter simulate: error: ")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "invalid JSON"),
        ('{"apps": {"id": "/a"}}', "expected"),
        ("[1, 2]", "expected"),
    ],
)
def test_invalid_apps_file(
    tmp_path: Path, content: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "apps.json"
    path.write_text(content)
    assert main(["--apps", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_invalid_app_definition_in_apps_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "apps.json"
    path.write_text('[{"id": "/Bad Id"}]')
    assert main(["--apps", str(path), "--listen", "127.0.0.1:0", "--executor", "none"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Object is not valid" in err and '"/id"' in err


def test_defaults() -> None:
    args = build_parser().parse_args([])
    assert args.listen == ("127.0.0.1", 8080)
    assert args.executor == "local" and args.heartbeat_interval == 10.0
    assert args.port_range == (31000, 32000)
