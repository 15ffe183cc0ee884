"""--help shows every flag's SERVICEROUTER_* variable and default; yes/no flags
(including --no-verify-tls) read their variable too."""

from __future__ import annotations

import argparse
import re

import pytest

from servicerouter import cli
from servicerouter.envflags import env_name

COMMANDS = ("run", "render", "sync")


def subparser(command: str, env: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = cli.build_parser(env or {})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def flat_help(p: argparse.ArgumentParser, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag
    return p.format_help()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_shows_its_variable_and_default(command: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    p = subparser(command)
    text = flat_help(p, monkeypatch)
    missing = []
    for action in p._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag in (None, "--help"):
            continue
        name = env_name(flag)
        if not re.search(rf"\[env {name}, default [^\]]+\]", text):
            missing.append(f"{flag} ({name})")
    assert not missing, f"{command} --help lacks '[env NAME, default X]' for: {missing}"


def test_help_shows_the_default_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    text = flat_help(subparser("run", {"SERVICEROUTER_STATS_PORT": "0"}), monkeypatch)
    assert "[env SERVICEROUTER_STATS_PORT (set), default 0]" in text
    text = flat_help(subparser("run"), monkeypatch)
    assert "[env SERVICEROUTER_STATS_PORT, default 9090]" in text
    assert "[env SERVICEROUTER_LISTEN, default 127.0.0.1:9091]" in text
    assert "[env SERVICEROUTER_GROUP, default every app]" in text
    assert "[env SERVICEROUTER_NO_VERIFY_TLS, default off]" in text
    assert "%(default)" not in text
    # What a help said beside its default stays (it read "(default 10050; 0 = off)",
    # and the whole parenthesis went with the default).
    assert "get one from this range; 0 = off [env" in text
    for line in text.splitlines():  # no half-removed "(default %(default)s)"
        assert line.count("(") == line.count(")"), line


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("yes", True),
                                                 ("false", False), ("0", False)])
def test_no_verify_tls_reads_its_variable(value: str, expected: bool) -> None:
    args = subparser("run", {"SERVICEROUTER_NO_VERIFY_TLS": value}).parse_args([])
    assert args.no_verify_tls is expected


def test_a_yes_no_variable_with_another_value_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser({"SERVICEROUTER_NO_VERIFY_TLS": "maybe"}).parse_args(["run"])
    assert "SERVICEROUTER_NO_VERIFY_TLS='maybe' is not valid for --no-verify-tls" in \
        capsys.readouterr().err


def test_a_choice_variable_outside_the_choices_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser({"SERVICEROUTER_UPDATE_STRATEGY": "sometimes"}).parse_args(["run"])
    assert "SERVICEROUTER_UPDATE_STRATEGY='sometimes' is not one of runtime, reload" in \
        capsys.readouterr().err


def test_run_and_sync_say_the_same_about_the_haproxy_they_reload() -> None:
    """One definition of the HAProxy-process flags: the same help and default in both."""
    def described(command: str) -> dict[str, tuple[str | None, object]]:
        return {o: (a.help, a.default) for a in subparser(command)._actions
                for o in a.option_strings}

    run, sync = described("run"), described("sync")
    shared = ("--haproxy-config", "--haproxy-bin", "--reload-command",
              "--haproxy-master-socket")
    assert {f: run[f] for f in shared} == {f: sync[f] for f in shared}
    assert "--start-haproxy" in run and "--start-haproxy" not in sync
    # sync reloads one way; run may also put --start-haproxy's master socket somewhere.
    with pytest.raises(SystemExit):
        subparser("sync").parse_args(["--reload-command", "x", "--haproxy-master-socket", "y"])
    args = subparser("run").parse_args(["--start-haproxy", "--haproxy-master-socket", "y"])
    assert args.start_haproxy and args.haproxy_master_socket == "y"


SECRETS = {"SERVICEROUTER_MARATHON_CREDENTIALS": "alice:s3cr3t-pw",
           "SERVICEROUTER_DCOS_TOKEN": "eyJ-s3cr3t-token",
           "SERVICEROUTER_MARATHON": "http://bob:s3cr3t-url@m1:8080,https://m2:8443"}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_never_shows_a_secret(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--help goes to terminals, tickets and CI logs: the variables' values that are
    secrets are not shown, and a URL's user:password is masked."""
    text = flat_help(subparser(command, SECRETS), monkeypatch)
    assert "s3cr3t" not in text
    assert "[env SERVICEROUTER_MARATHON_CREDENTIALS (set), default hidden]" in text
    assert "[env SERVICEROUTER_DCOS_TOKEN (set), default hidden]" in text
    assert "[env SERVICEROUTER_MARATHON (set), default http://***@m1:8080,https://m2:8443]" \
        in text


def test_the_secrets_in_the_environment_are_still_used() -> None:
    args = subparser("sync", SECRETS).parse_args([])
    assert args.marathon_credentials == "alice:s3cr3t-pw"
    assert args.dcos_token == "eyJ-s3cr3t-token"
    assert args.marathon == ["http://bob:s3cr3t-url@m1:8080", "https://m2:8443"]


@pytest.mark.parametrize("url", [
    "bob:s3cr3t@m1:8080",  # no scheme
    "ftp://bob:s3cr3t@m1",
    "http://bob:s3cr3t@m1:99999",
    "http://bob:s3/cr3t@m1:8080",  # a '/' httpx reads as the end of the host
    "http://bob:s3@cr3t@m1:8080/?x=1",  # an '@' not %-encoded
    "http://bob:s3cr3t\x01@m1",
])
def test_an_invalid_marathon_url_is_reported_without_its_password(url: str) -> None:
    from servicerouter.marathon.client import MarathonConfigError, parse_marathon_url

    with pytest.raises(MarathonConfigError) as info:
        parse_marathon_url(url)
    message = str(info.value)
    assert "s3" not in message and "cr3t" not in message, message
    assert "***@" in message, message
