"""CLI contracts: flags, SERVICEROUTER_* variables, the old invocation, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from servicerouter import cli
from servicerouter.daemon import detect_reload_command


def test_every_run_flag_reads_its_environment_variable() -> None:
    env = {"SERVICEROUTER_MARATHON": "http://m1:8080, http://m2:8080",
           "SERVICEROUTER_HAPROXY_SOCKET": "/tmp/x.sock",
           "SERVICEROUTER_STATS_PORT": "0", "SERVICEROUTER_START_HAPROXY": "true",
           "SERVICEROUTER_HEALTH_CHECK": "false", "SERVICEROUTER_LISTEN": "0.0.0.0:9999",
           "SERVICEROUTER_MIN_RELOAD_INTERVAL": "2.5", "SERVICEROUTER_GROUP": "external"}
    args = cli.build_parser(env).parse_args(["run"])
    assert args.marathon == ["http://m1:8080", "http://m2:8080"]
    assert args.haproxy_socket == "/tmp/x.sock" and args.stats_port == 0
    assert args.start_haproxy is True and args.health_check is False
    assert args.listen == ("0.0.0.0", 9999) and args.min_reload_interval == 2.5
    assert args.group == ["external"]


def test_flags_win_over_the_environment() -> None:
    args = cli.build_parser({"SERVICEROUTER_STATS_PORT": "0"}).parse_args(
        ["run", "--stats-port", "9100"])
    assert args.stats_port == 9100


def test_defaults_listen_on_loopback() -> None:
    args = cli.build_parser({}).parse_args(["run"])
    assert args.listen == ("127.0.0.1", 9091)
    assert args.stats_address == "127.0.0.1"
    assert args.haproxy_socket == "/run/haproxy/admin.sock"
    assert (args.slots_min_free, args.slots_increment) == (2, 4)
    assert (args.resync_interval, args.min_reload_interval) == (300.0, 1.0)


def test_bad_environment_value_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser({"SERVICEROUTER_STATS_PORT": "http"}).parse_args(["run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SERVICEROUTER_STATS_PORT='http'" in err[0]
    assert err[0].startswith("servicerouter run: error:")


@pytest.mark.parametrize("command", ["render", "sync"])
def test_a_bad_variable_of_another_commands_flag_stops_only_that_command(
        capsys: pytest.CaptureFixture[str], command: str) -> None:
    """/etc/default/servicerouter is the daemon's: a bad value there for a flag only
    ``run`` has stopped cron's ``sync`` (and ``render``) too, with an error naming
    ``run``; and a bad --log-level variable stopped ``run`` as "servicerouter render"."""
    env = {"SERVICEROUTER_RESYNC_INTERVAL": "nan"}
    args = cli.build_parser(env).parse_args([command, "--marathon", "http://m1"])
    assert args.command == command
    with pytest.raises(SystemExit):
        cli.build_parser(env).parse_args(["run", "--marathon", "http://m1"])
    assert capsys.readouterr().err.startswith("servicerouter run: error: environment "
                                              "variable SERVICEROUTER_RESYNC_INTERVAL='nan'")
    with pytest.raises(SystemExit):
        cli.build_parser({"SERVICEROUTER_LOG_LEVEL": "loud"}).parse_args([command])
    assert capsys.readouterr().err.startswith(f"servicerouter {command}: error: "
                                              "environment variable SERVICEROUTER_LOG_LEVEL")


def test_unknown_flag_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["render", "--bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["servicerouter: error: unrecognized arguments: --bogus (see --help)"]


def test_render_reports_a_missing_payload_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", "--apps-json", "/nonexistent.json"]) == 1
    assert capsys.readouterr().err.strip() == (
        "servicerouter: error: --apps-json /nonexistent.json: No such file or directory")


def test_render_reports_invalid_json(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "apps.json"
    bad.write_text("{not json")
    assert cli.main(["render", "--apps-json", str(bad)]) == 1
    assert f"--apps-json {bad}: not JSON" in capsys.readouterr().err


def test_render_reports_a_payload_that_is_not_text(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "apps.json"
    bad.write_bytes(b'{"apps": ["\xff"]}')
    assert cli.main(["render", "--apps-json", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"servicerouter: error: --apps-json {bad}: not JSON text" in err
    assert "Traceback" not in err


def test_render_reports_a_payload_without_apps(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "apps.json"
    bad.write_text('{"message": "nope"}')
    assert cli.main(["render", "--apps-json", str(bad), "-o", str(tmp_path / "out")]) == 1
    assert "has no 'apps' list" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing is written


def test_invalid_marathon_url_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", "--marathon", "marathon:8080"]) == 2  # a usage error
    assert "marathon:8080" in capsys.readouterr().err


def test_old_invocation_without_subcommand_means_run(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    async def fake_run(args: object) -> int:
        seen["args"] = args
        return 0

    monkeypatch.setattr("servicerouter.daemon.run_daemon", fake_run)
    assert cli.main(["--marathon", "http://m:8080", "--haproxy-config", "/tmp/h.cfg"]) == 0
    assert seen["args"].command == "run"  # type: ignore[attr-defined]
    assert seen["args"].haproxy_config == "/tmp/h.cfg"  # type: ignore[attr-defined]


def test_reload_command_is_detected_like_servicerouter_py(tmp_path: Path) -> None:
    assert detect_reload_command(tmp_path) is None
    (tmp_path / "etc/init.d").mkdir(parents=True)
    (tmp_path / "etc/init.d/haproxy").write_text("#!/bin/sh\n")
    assert detect_reload_command(tmp_path) == "/etc/init.d/haproxy reload"


def test_multi_tenant_flags_and_their_environment_variables() -> None:
    env = {"SERVICEROUTER_SSL_CERT_DIR": "/etc/ssl/a,/etc/ssl/b",
           "SERVICEROUTER_VHOST_POLICY": "exclusive",
           "SERVICEROUTER_MAX_SERVERS_PER_BACKEND": "500"}
    settings = cli.settings_from(cli.build_parser(env).parse_args(["run"]))
    assert settings.ssl_cert_dirs == ("/etc/ssl/a", "/etc/ssl/b")
    assert (settings.vhost_policy, settings.max_servers_per_backend) == ("exclusive", 500)
    defaults = cli.settings_from(cli.build_parser({}).parse_args(["render"]))
    assert (defaults.ssl_cert_dirs, defaults.vhost_policy) == ((), "group")
    assert defaults.max_servers_per_backend == 2000
    with pytest.raises(SystemExit):  # argparse: exit 2 (test_a_bad_value_is_exit_2_...)
        cli.build_parser({}).parse_args(["run", "--max-servers-per-backend", "-1"])
    with pytest.raises(SystemExit):
        cli.build_parser({}).parse_args(["run", "--vhost-policy", "anyone"])


def test_marathon_limits_have_flags_environment_and_sane_defaults(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser({}).parse_args(["run"])
    assert (args.max_event_bytes, args.marathon_timeout) == (1024 * 1024, 30.0)
    env = {"SERVICEROUTER_MAX_EVENT_BYTES": "2097152", "SERVICEROUTER_MARATHON_TIMEOUT": "5"}
    args = cli.build_parser(env).parse_args(["run"])
    assert (args.max_event_bytes, args.marathon_timeout) == (2097152, 5.0)
    for bad in (["--max-event-bytes", "100"], ["--marathon-timeout", "0"]):
        with pytest.raises(SystemExit):
            cli.build_parser({}).parse_args(["run", *bad])
        assert bad[0] in capsys.readouterr().err


def test_a_socket_path_haproxy_would_refuse_is_a_clear_error_at_start() -> None:
    long = "/run/" + "x" * 93  # 98 characters: HAProxy 2.6 says "too long (max 97)"
    args = cli.build_parser({}).parse_args(["run", "--haproxy-socket", long])
    with pytest.raises(cli.CliError, match=r"--haproxy-socket .*98 characters.*at most 97"):
        cli.settings_from(args)
    args = cli.build_parser({}).parse_args(["run", "--haproxy-socket", long[:97]])
    assert cli.settings_from(args).socket_path == long[:97]


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--marathon-timeout", "inf", "is not a number of seconds > 0"),  # would wait forever
    ("--marathon-timeout", "nan", "is not a number of seconds > 0"),
    ("--stall-timeout", "0", "is not a number of seconds > 0"),  # reconnect storm
    ("--resync-interval", "0", "is not a number of seconds > 0"),  # full sync every 50 ms
    ("--reconcile-interval", "0", "is not a number of seconds > 0"),
    ("--coalesce-ms", "-1", "is not a number of milliseconds >= 0"),  # its unit, not seconds
    ("--min-reload-interval", "-1", "is not a number of seconds >= 0"),
    ("--slots-min-free", "-3", "is not a whole number in 0-1000"),
    ("--slots-increment", "0", "is not a whole number in 1-1000"),
    ("--slots-increment", "1000000", "is not a whole number in 1-1000"),  # 10^6 servers each
    ("--max-servers-per-backend", "-1", "is not a whole number in 0-1000000"),
    ("--pool-spares", "0", "is not a whole number in 1-1000"),
    ("--tenant-reload-burst", "0", "is not a whole number in 1-1000"),  # never a reload
    ("--tenant-reload-interval", "inf", "is not a number of seconds >= 0"),  # held forever
    ("--haproxy-grace", "61", "is not auto or a number of seconds in 0-60"),
    ("--haproxy-grace", "nan", "is not auto or a number of seconds in 0-60"),
    ("--stats-address", "a b", "is not an IP address, a host name or *"),
    ("--stats-address", "127.0.0.1\n    bind :1", "is not an IP address, a host name or *"),
])
def test_a_bad_value_is_exit_2_naming_the_flag_or_variable(
        capsys: pytest.CaptureFixture[str], flag: str, value: str, says: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser({}).parse_args(["run", "--marathon", "http://m1", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"argument {flag}: {value!r} {says}" in err[0], err
    name = "SERVICEROUTER_" + flag.lstrip("-").upper().replace("-", "_")
    with pytest.raises(SystemExit) as exc:
        cli.build_parser({name: value}).parse_args(["run", "--marathon", "http://m1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"environment variable {name}={value!r}" in err[0], err


@pytest.mark.parametrize(("value", "ms"), [("auto", -1), ("AUTO", -1), ("0", 0),
                                           ("0.25", 250), ("60", 60_000)])
def test_haproxy_grace_is_auto_or_seconds(value: str, ms: int) -> None:
    args = cli.build_parser({}).parse_args(["render", "--haproxy-grace", value])
    assert cli.settings_from(args).grace_ms == ms
    assert cli.settings_from(cli.build_parser({}).parse_args(["render"])).grace_ms == -1


@pytest.mark.parametrize("value", ["127.0.0.1", "::1", "*", "", "lb-1.example.com"])
def test_a_good_stats_address_is_kept(value: str) -> None:
    args = cli.build_parser({}).parse_args(["run", "--stats-address", value])
    assert args.stats_address == value


def test_run_survives_sighup_and_sigusr1_while_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the daemon's loop handles them (~1 s of imports and set-up), SIGHUP or
    SIGUSR1 (a `systemctl reload` right after start) killed the process."""
    import signal

    from servicerouter import daemon

    seen: dict[str, object] = {}

    async def fake_run(_: object) -> int:
        seen.update({s.name: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)})
        return 0

    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    monkeypatch.setattr(daemon, "run_daemon", fake_run)
    try:
        assert cli.main(["run", "--marathon", "http://m1"]) == 0
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert seen and all(callable(h) for h in seen.values()), seen
