"""The Dockerfile, read by Docker's own parser (the ``dockerfile`` package wraps
buildkit's): non-root, a HEALTHCHECK on /healthz, ``run --start-haproxy`` as the
entry point, only real SERVICEROUTER_* variables, and the Makefile's install."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from servicerouter import cli
from servicerouter.envflags import env_name

dockerfile = pytest.importorskip("dockerfile", reason="pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]


def commands() -> list[Any]:
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def one(cmd: str) -> Any:
    found = [c for c in commands() if c.cmd == cmd]
    assert len(found) == 1, f"{cmd}: {len(found)} instructions"
    return found[0]


def test_runs_as_a_dedicated_user_from_the_entry_point_on() -> None:
    cmds = [c.cmd for c in commands()]
    user = one("USER").value[0]
    assert user not in ("root", "0")
    assert cmds.index("USER") < cmds.index("ENTRYPOINT")
    assert any("useradd --system" in c.value[0] and user in c.value[0]
               for c in commands() if c.cmd == "RUN")


def test_entry_point_starts_haproxy_itself() -> None:
    entry = one("ENTRYPOINT")
    assert entry.json and list(entry.value) == ["servicerouter", "run", "--start-haproxy"]


def test_healthcheck_asks_healthz() -> None:
    check = one("HEALTHCHECK")
    assert check.json and check.value[0] == "CMD"
    assert "/healthz" in check.value[-1]
    assert any(f.startswith("--start-period=") for f in check.flags)


def test_environment_names_real_flags() -> None:
    env = one("ENV").value
    names = {k for k in env[0::2] if k.startswith("SERVICEROUTER_")}
    sub = next(a for a in cli.build_parser({})._actions
               if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    known = {env_name(a.option_strings[0]) for a in run._actions if a.option_strings}
    assert names and not names - known, sorted(names - known)


def test_install_is_the_makefiles_install() -> None:
    runs = [c.value[0] for c in commands() if c.cmd == "RUN"]
    installs = [r for r in runs if "make install-venv" in r]
    assert installs, "the image must install with the Makefile's command"
    assert "pip install" not in " ".join(runs).replace("make install-venv", "")
    copied = {v for c in commands() if c.cmd == "COPY" for v in c.value[:-1]}
    assert "Makefile" in copied
    assert re.search(r"^install-venv:", (ROOT / "Makefile").read_text(), re.M)
