"""The Dockerfile, read by Docker's own parser (the ``dockerfile`` package wraps
buildkit's): non-root, a HEALTHCHECK on /livez, ``run --start-haproxy`` as the
entry point, only real SERVICEROUTER_* variables, and the Makefile's install; and
contrib/marathon/servicerouter.json, the same image run as a Marathon app."""

from __future__ import annotations

import argparse
import json
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


def test_healthcheck_asks_livez() -> None:
    """Liveness, not /healthz (readiness: 503 also while Marathon is away long)."""
    check = one("HEALTHCHECK")
    assert check.json and check.value[0] == "CMD"
    assert "/livez" in check.value[-1] and "/healthz" not in check.value[-1]
    assert any(f.startswith("--start-period=") for f in check.flags)


def test_environment_names_real_flags() -> None:
    env = one("ENV").value
    names = {k for k in env[0::2] if k.startswith("SERVICEROUTER_")}
    sub = next(a for a in cli.build_parser({})._actions
               if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    known = {env_name(a.option_strings[0]) for a in run._actions if a.option_strings}
    assert names and not names - known, sorted(names - known)


def test_the_user_owns_every_folder_the_daemon_writes() -> None:
    """The daemon writes next to the config (the config, its lock, <config>.d, the
    owners file) and next to each socket (the socket's lock; HAProxy, the same user,
    binds the sockets): each folder must be made for the image's USER, as
    servicerouter-haproxy.service's /run/haproxy was not for its unit."""
    env = one("ENV").value
    values = dict(zip(env[0::2], env[1::2], strict=True))
    user = one("USER").value[0]
    runs = " ".join(c.value[0] for c in commands() if c.cmd == "RUN")
    owned = set(re.findall(rf"useradd [^&]*--home-dir (\S+) [^&]*--create-home[^&]* {user}\b",
                           runs))
    owned |= set(re.findall(rf"install -d -o {user} -g {user}(?: -m \d+)? (\S+)", runs))
    for name in ("SERVICEROUTER_HAPROXY_CONFIG", "SERVICEROUTER_HAPROXY_SOCKET",
                 "SERVICEROUTER_HAPROXY_MASTER_SOCKET"):
        folder = str(Path(values[name]).parent)
        assert folder in owned, f"{name}={values[name]}: {folder} is not {user}'s ({owned})"


def test_install_is_the_makefiles_install() -> None:
    runs = [c.value[0] for c in commands() if c.cmd == "RUN"]
    installs = [r for r in runs if "make install-venv" in r]
    assert installs, "the image must install with the Makefile's command"
    assert "pip install" not in " ".join(runs).replace("make install-venv", "")
    copied = {v for c in commands() if c.cmd == "COPY" for v in c.value[:-1]}
    assert "Makefile" in copied
    assert re.search(r"^install-venv:", (ROOT / "Makefile").read_text(), re.M)


def test_stop_signal_starts_the_graceful_stop() -> None:
    assert one("STOPSIGNAL").value[0] in {"SIGTERM", "SIGINT", "SIGQUIT"}


# --- contrib/marathon/servicerouter.json: the same image as a Marathon app ---------------


def run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser({})._actions
               if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["run"]
    return parser


def marathon_app() -> dict[str, Any]:
    app: dict[str, Any] = json.loads(
        (ROOT / "contrib" / "marathon" / "servicerouter.json").read_text())
    return app


def test_marathon_app_sets_only_real_variables() -> None:
    known = {env_name(a.option_strings[0]) for a in run_parser()._actions
             if a.option_strings}
    names = set(marathon_app()["env"])
    assert names and not names - known, sorted(names - known)


def test_marathon_app_health_checks_livez_on_the_listen_port() -> None:
    """Marathon kills a task whose health check fails: /livez (HAProxy serves), not
    /healthz, which also fails while Marathon is unreachable (tests/integration/
    test_container.py runs both against a daemon that lost Marathon)."""
    app = marathon_app()
    listen = app["env"].get("SERVICEROUTER_LISTEN", "127.0.0.1:9091")
    port = int(listen.rpartition(":")[2])
    (check,) = app["healthChecks"]
    assert check["path"] == "/livez"
    assert app["portDefinitions"][check["portIndex"]]["port"] == port
    assert app["requirePorts"] is True, "the health check needs the port it was given"


def test_marathon_app_kill_grace_outlasts_the_graceful_stop() -> None:
    """Mesos' default grace is 3 s: shorter than HAProxy's soft stop and SIGTERM."""
    from servicerouter.haproxy.control import STOP_GRACE

    assert marathon_app()["taskKillGracePeriodSeconds"] > 2 * STOP_GRACE
