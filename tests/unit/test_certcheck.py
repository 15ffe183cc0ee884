"""Certificate files HAProxy must judge: all those of a sync in one ``haproxy -c``.

Each test runs the real ``haproxy`` behind a wrapper that logs how many certificate
files each ``haproxy -c`` was asked about (a config line each)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from servicerouter import hostfacts
from servicerouter.layout import Settings
from servicerouter.model import App, Options, Service

from .payloads import LOADABLE_PEM as PEM
from .payloads import UNLOADABLE_PEM

# OpenSSL's own loader refuses it (a block it cannot decode), HAProxy 2.6 takes it (it
# stops reading at that block): only haproxy -c can judge it.
TAKEN = PEM + "-----BEGIN FOO-----\n!!!!\n-----END FOO-----\n"
# PEM's certificate, which issued itself: the issuer an OCSP response needs.
ISSUER = PEM.split("-----BEGIN PRIVATE KEY-----")[0]


def logging_haproxy(tmp_path: Path, crash_on: str | None = None
                    ) -> tuple[str, Callable[[], list[int]]]:
    """A haproxy that logs how many files each ``haproxy -c`` names, and a reader of
    that log. With ``crash_on``, a config naming that text dies as HAProxy 2.6.12 does
    after a valid config holding a ``.sctl`` (a double free): no ALERT, no verdict."""
    real = shutil.which("haproxy")
    if real is None:
        pytest.skip("haproxy is not on PATH")
    calls = tmp_path / "calls"
    crash = (f'case "$cfg" in *{crash_on}*) echo "Configuration file is valid"; '
             'kill -ABRT $$;; esac\n') if crash_on else ""
    wrapper = tmp_path / "haproxy"
    wrapper.write_text("#!/bin/sh\ncfg=$(cat)\n"
                       f"printf '%s\\n' \"$cfg\" | grep -c ' crt ' >> {calls}\n{crash}"
                       f"printf '%s\\n' \"$cfg\" | exec {real} \"$@\"\n")
    wrapper.chmod(0o755)

    def asked() -> list[int]:
        return [int(n) for n in calls.read_text().split()] if calls.exists() else []

    return str(wrapper), asked



def pem_files(tmp_path: Path, count: int, text: str) -> list[Path]:
    """``count`` certificate files holding ``text``, in ``tmp_path``/certs."""
    certs = tmp_path / "certs"
    certs.mkdir()
    files = [certs / f"c{i}.pem" for i in range(count)]
    for f in files:
        f.write_text(text)
    return files

def apps_naming(files: list[Path]) -> list[App]:
    return [App(f"/t/a{i}", services=(Service(f"/t/a{i}", 0, 10000 + i,
                                              Options(ssl_cert=str(f))),))
            for i, f in enumerate(files)]


def gathered(files: list[Path], haproxy: str) -> dict[str, hostfacts.CertFact]:
    settings = Settings(http_port=0, https_port=0, haproxy_bin=haproxy,
                        ssl_cert_dirs=(str(files[0].parent),))
    return dict(hostfacts.gather(apps_naming(files), settings).certs)


def refused_in_haproxys_words(path: Path) -> str:
    return (f"is a file HAProxy cannot load (haproxy -c: unable to load certificate from "
            f"file '{path}'.); it must hold the certificate, its private key and any chain "
            "as PEM blocks HAProxy can read")


def test_one_haproxy_check_judges_every_file_a_sync_needs_it_for(tmp_path: Path) -> None:
    """Each file HAProxy had to judge cost a haproxy -c of its own (~40 ms) on the event
    loop: 1,000 apps with their own certificates (all of them, with OCSP stapling)
    stalled the first sync, churn and /healthz for 40 s."""
    haproxy, asked = logging_haproxy(tmp_path)
    files = pem_files(tmp_path, 40, TAKEN)
    facts = gathered(files, haproxy)
    assert {f.path for f in facts.values()} == {str(f) for f in files}
    assert asked() == [40]
    gathered(files, haproxy)
    assert asked() == [40]  # the same versions: not asked again


def test_a_bad_file_among_good_ones_is_refused_alone_in_haproxys_words(
        tmp_path: Path) -> None:
    """One haproxy -c for many files fails for the one HAProxy refuses: its ALERT names
    the config line, which names the file. The others are admitted (asked once more
    without it: HAProxy stops checking after a fatal error), and so is every good file
    beside a tenant's many broken ones (HAProxy stops at its 50th fatal error)."""
    haproxy, asked = logging_haproxy(tmp_path)
    files = pem_files(tmp_path, 21, TAKEN)
    bad = files[10]
    bad.write_text(UNLOADABLE_PEM)
    facts = gathered(files, haproxy)
    assert facts[str(bad)].path is None
    assert facts[str(bad)].problem == refused_in_haproxys_words(bad)
    assert {k for k, f in facts.items() if f.path == k} == {str(f) for f in files} - {str(bad)}
    assert asked() == [21, 20]
    gathered(files, haproxy)
    assert asked() == [21, 20]  # each verdict kept for its file's version

    many = tmp_path / "many"
    many.mkdir()
    broken = [many / f"b{i}.pem" for i in range(60)]
    good = [many / f"g{i}.pem" for i in range(5)]
    for f in broken:
        f.write_text(UNLOADABLE_PEM)
    for f in good:
        f.write_text(TAKEN)
    start = len(asked())
    facts = gathered([*broken[:30], *good, *broken[30:]], haproxy)
    assert all(facts[str(f)].problem == refused_in_haproxys_words(f) for f in broken)
    assert all(facts[str(f)].path == str(f) for f in good)
    rounds = asked()[start:]
    assert rounds[0] == 65 and len(rounds) <= 4, rounds


def test_a_batch_that_fails_naming_no_file_is_split_until_it_does(tmp_path: Path) -> None:
    """haproxy -c that dies without an ALERT (HAProxy 2.6.12 after a valid config with a
    .sctl) blames no line: the files are checked in halves, down to the one, which is
    refused as "cannot be checked" (fail closed, asked again next time) and the others
    admitted, in a bounded number of checks."""
    files = pem_files(tmp_path, 16, TAKEN)
    crash = files[0].parent / "crash.pem"
    crash.write_text(TAKEN)
    files[5] = crash
    haproxy, asked = logging_haproxy(tmp_path, crash_on="crash.pem")
    facts = gathered(files, haproxy)
    assert facts[str(crash)].path is None
    assert facts[str(crash)].problem == (
        "cannot be checked: OpenSSL cannot load it (bad base64 decode), and "
        f"{haproxy} -c failed without a verdict (exit status -6)")
    assert all(facts[str(f)].path == str(f) for f in files if f != crash)
    assert asked()[0] == 16 and len(asked()) <= 9  # halves: 16, 8, 8, 4, 4, 2, 2, 1, 1
    checks = len(asked())
    gathered(files, haproxy)
    assert asked()[checks:] == [1]  # the others' verdicts are kept; it is asked again


def test_a_refreshed_ocsp_response_is_not_a_new_question(tmp_path: Path) -> None:
    """With OCSP stapling a .ocsp sits beside every certificate and is rewritten daily:
    each rewrite cost every file a haproxy -c again. HAProxy 2.6 only warns about an
    .ocsp it cannot use ("Content will be ignored"); what it refuses is an .ocsp it
    cannot read or whose certificate's issuer it cannot find (in the chain, or in a
    .issuer that must be that issuer). So the .ocsp's content is no part of the
    question, and a .issuer without a .ocsp (which HAProxy does not read) asks none."""
    haproxy, asked = logging_haproxy(tmp_path)
    files = pem_files(tmp_path, 10, PEM)
    certs = files[0].parent
    for i, f in enumerate(files):
        Path(f"{f}.issuer").write_text(ISSUER)
        Path(f"{f}.ocsp").write_bytes(b"response of day 1 %d" % i)
    facts = gathered(files, haproxy)
    assert all(facts[str(f)].path == str(f) for f in files)
    assert asked() == [10]
    for i, f in enumerate(files):  # the daily refresh: new files, new content
        Path(f"{f}.ocsp").unlink()
        Path(f"{f}.ocsp").write_bytes(b"the response of day 2, %d" % i)
    assert gathered(files, haproxy) == facts
    assert asked() == [10]
    lone = certs / "lone.pem"  # a .issuer alone: HAProxy does not read it
    lone.write_text(PEM)
    Path(f"{lone}.issuer").write_text("not a certificate at all\n")
    assert gathered([lone], haproxy)[str(lone)].path == str(lone)
    assert asked() == [10]
    # What does matter is asked about: a .issuer HAProxy cannot read, an .ocsp without
    # any issuer, an .ocsp that is a folder.
    unread, orphan, folder = certs / "unread.pem", certs / "orphan.pem", certs / "folder.pem"
    for f in (unread, orphan, folder):
        f.write_text(PEM)
        Path(f"{f}.ocsp").write_text("x")
    Path(f"{unread}.issuer").write_text(UNLOADABLE_PEM.split("-----BEGIN PRIVATE")[0])
    Path(f"{folder}.ocsp").unlink()
    Path(f"{folder}.ocsp").mkdir()
    Path(f"{folder}.issuer").write_text(ISSUER)
    facts = gathered([unread, orphan, folder], haproxy)
    assert asked() == [10, 3]
    assert f"'{unread}.issuer' cannot be read or parsed" in str(facts[str(unread)].problem)
    assert "impossible to compute the OCSP certificate ID" in str(facts[str(orphan)].problem)
    assert "Error reading OCSP response from file" in str(facts[str(folder)].problem)
    # A .issuer replaced is a new question.
    Path(f"{files[0]}.issuer").write_text(UNLOADABLE_PEM.split("-----BEGIN PRIVATE")[0])
    assert gathered(files, haproxy)[str(files[0])].path is None
    assert asked() == [10, 3, 1]


def test_haproxy_asked_in_batches_fails_closed_when_it_cannot_run(tmp_path: Path) -> None:
    """Every file of the batch is refused, saying why, and asked again next time."""
    files = pem_files(tmp_path, 3, TAKEN)
    missing = str(tmp_path / "no-haproxy")
    facts = gathered(files, missing)
    assert {f.problem for f in facts.values()} == {
        f"cannot be checked: OpenSSL cannot load it (bad base64 decode), and {missing} -c "
        "cannot run: No such file or directory"}
    haproxy, asked = logging_haproxy(tmp_path)
    assert all(f.path for f in gathered(files, haproxy).values()) and asked() == [3]


def test_the_checks_of_one_gather_are_bounded(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Splitting stops at a budget of checks: what is left unjudged fails closed, and
    is asked again at the next gather."""
    from servicerouter import certcheck

    monkeypatch.setattr(certcheck, "MAX_CHECKS", 3)
    certs = tmp_path / "certs"
    certs.mkdir()
    files = [certs / f"crash{i}.pem" for i in range(8)]
    for f in files:
        f.write_text(TAKEN)
    haproxy, asked = logging_haproxy(tmp_path, crash_on="crash")
    facts = gathered(files, haproxy)
    assert len(asked()) == 3
    assert all(f.path is None and str(f.problem).startswith("cannot be checked: ")
               for f in facts.values())
    assert any(f"{haproxy} -c was not run for it" in str(f.problem) for f in facts.values())


def test_a_pipe_beside_a_certificate_is_refused_without_asking_haproxy(
        tmp_path: Path) -> None:
    """HAProxy opens an .ocsp or .sctl beside the file and waits there forever when it
    is a named pipe: haproxy -c hung until its timeout (and a batch of files with it,
    then each half of it), and so would the reload. Refused at once, in words."""
    import os

    haproxy, asked = logging_haproxy(tmp_path)
    files = pem_files(tmp_path, 4, TAKEN)
    os.mkfifo(f"{files[1]}.ocsp")
    facts = gathered(files, haproxy)
    assert facts[str(files[1])].problem == (
        f"has {files[1]}.ocsp beside it, which is not a regular file (a pipe, a socket or "
        "a device): HAProxy would wait on it while loading the certificate (haproxy -c "
        "and the reload hang there); it must be a file")
    assert all(facts[str(f)].path == str(f) for f in files if f != files[1])
    assert asked() == [3]


def test_a_check_that_times_out_leaves_nothing_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--haproxy-bin may be a wrapper that runs HAProxy as its child. At the timeout only
    the wrapper was killed: the HAProxy under it (waiting on a file, say) ran on,
    orphaned, one more each time the file was asked about."""
    import os
    import time

    from servicerouter import certcheck

    monkeypatch.setattr(certcheck, "CHECK_TIMEOUT", 0.5)
    child = tmp_path / "child.pid"
    wrapper = tmp_path / "haproxy"
    wrapper.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {child}\nwait\n")
    wrapper.chmod(0o755)
    files = pem_files(tmp_path, 1, TAKEN)
    facts = gathered(files, str(wrapper))
    assert "timed out" in str(facts[str(files[0])].problem)
    pid = int(child.read_text())
    for _ in range(100):  # bounded: the kill is sent before gather returns
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail(f"haproxy -c's child {pid} outlived the check's timeout")
