"""Validation, atomic writes, reloads and supervision with the real HAProxy binary."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from servicerouter.demo.procs import free_port
from servicerouter.haproxy.children import CHECK_NICE
from servicerouter.haproxy.master_cli import (
    HAProxyProcessError,
    MasterCLI,
    MasterUnavailable,
    ProcInfo,
)
from servicerouter.haproxy.process import (
    HAProxyProcess,
    ReloadError,
    StartError,
    atomic_write,
    keep_rejected,
    run_reload_command,
    validate,
)
from servicerouter.haproxy.runtime import RuntimeClient

from .conftest import needs_haproxy

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = [
    pytest.mark.integration,
    needs_haproxy,
    pytest.mark.timeout(30),
]


def config(root: Path, port: int, extra: str = "") -> str:
    return f"""\
global
    stats socket {root}/admin.sock mode 600 level admin
    hard-stop-after 5s
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend web
    bind 127.0.0.1:{port}
    default_backend web
backend web
    server s1 127.0.0.1:1 disabled
{extra}"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def haproxy(root: Path) -> AsyncIterator[HAProxyProcess]:
    cfg = root / "haproxy.cfg"
    cfg.write_text(config(root, free_port()))
    proc = HAProxyProcess(cfg, root / "master.sock", haproxy_bin=HAPROXY, stop_timeout=5)
    try:
        yield proc
    finally:
        await proc.stop()


# ---------------------------------------------------------------- validate / files
async def test_validate_accepts_and_rejects_with_haproxy_message(root: Path) -> None:
    good = config(root, free_port())
    ok = await validate(good, HAPROXY)
    assert ok.ok, ok.output
    bad = await validate(good + "    bogus_directive 1\n", HAPROXY)
    assert not bad.ok
    assert "unknown keyword 'bogus_directive'" in bad.output
    path = root / "bad.cfg"
    path.write_text(good.replace("mode http", "mode nonsense"))
    res = await validate(path, HAPROXY)
    assert not res.ok and "nonsense" in res.output
    as_str = await validate(str(path), HAPROXY)  # a str naming an existing file is a path
    assert not as_str.ok and "bad.cfg" in as_str.output
    missing = await validate(good, str(root / "no-haproxy"))
    assert not missing.ok and "no-haproxy" in missing.output


async def test_the_check_yields_the_cpu_to_haproxy_and_the_daemon(root: Path) -> None:
    """haproxy -c of a big config is seconds of a core on the host whose worker serves
    every client: it runs niced, while the daemon and HAProxy itself are not."""
    wrapper = root / "haproxy-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "niceness $(nice)"\nexec {HAPROXY} "$@"\n')
    wrapper.chmod(0o755)
    mine = os.nice(0)
    res = await validate(config(root, free_port()), str(wrapper))
    assert res.ok, res.output
    assert f"niceness {min(mine + CHECK_NICE, 19)}" in res.output
    assert os.nice(0) == mine  # only the child


async def test_frontend_and_backend_may_share_a_name(root: Path) -> None:
    res = await validate(config(root, free_port()), HAPROXY)  # "web" is both
    assert res.ok and "warning" not in res.output.lower()


def test_atomic_write_keeps_mode_and_keep_rejected(root: Path) -> None:
    path = root / "haproxy.cfg"
    atomic_write(path, "one\n")
    assert path.read_text() == "one\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o640)
    atomic_write(path, "two\n")
    assert path.read_text() == "two\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    rejected = keep_rejected(path, "bad\n")
    assert rejected == root / "haproxy.cfg.rejected" and rejected.read_text() == "bad\n"
    assert sorted(p.name for p in root.iterdir()) == ["haproxy.cfg", "haproxy.cfg.rejected"]


async def test_run_reload_command() -> None:
    await run_reload_command("true")
    await run_reload_command(["/bin/sh", "-c", "exit 0"])
    with pytest.raises(ReloadError, match=r"exited with 3: boom"):
        await run_reload_command("echo boom >&2; exit 3")
    with pytest.raises(ReloadError) as silent:  # nothing said: no dangling ': '
        await run_reload_command("false")
    assert str(silent.value) == "reload command 'false' exited with 1 and printed nothing"
    with pytest.raises(ReloadError, match="timed out"):
        await run_reload_command("sleep 5", timeout=0.2)
    with pytest.raises(ReloadError, match="could not start"):
        await run_reload_command(["/nonexistent/reloader"])


async def test_master_socket_missing_names_it(root: Path) -> None:
    with pytest.raises(MasterUnavailable, match=str(root / "m.sock")):
        await MasterCLI(str(root / "m.sock")).show_proc()


async def test_the_admin_socket_given_as_master_socket_is_named_as_such(
        haproxy: HAProxyProcess, root: Path) -> None:
    """A common mix-up (--haproxy-master-socket naming the stats socket): the error was
    'no master line in show proc output' and HAProxy's list of unknown commands."""
    await haproxy.start()
    with pytest.raises(HAProxyProcessError) as info:
        await MasterCLI(str(root / "admin.sock")).show_proc()
    assert str(info.value) == (
        f"HAProxy master socket {root}/admin.sock: this is not HAProxy's master CLI (the "
        "socket of -S) but a worker's stats socket (the config's 'stats socket', which "
        "--haproxy-socket names): it does not know 'show proc'")


# ---------------------------------------------------------------- process lifecycle
async def test_start_reload_stop_leaves_nothing(haproxy: HAProxyProcess) -> None:
    first = await haproxy.start()
    assert first.master_pid == haproxy.pid and len(first.workers) == 1
    runtime = RuntimeClient(str(Path(haproxy.config).parent / "admin.sock"))
    await runtime.execute_checked(["set server web/s1 weight 9"])

    second = await haproxy.reload()
    assert second.reloads == first.reloads + 1
    assert second.worker_pids != first.worker_pids
    info = await runtime.show_info()  # a fresh connection reaches the new worker
    assert int(info["Pid"]) == second.worker_pids[0]
    via_master = await haproxy.master.worker_command("show info")
    assert f"Pid: {second.worker_pids[0]}" in via_master
    s1 = (await runtime.show_servers_state("web"))[0]
    assert s1.weight == 1  # runtime changes do not survive a reload

    pids = {*first.all_pids, *second.all_pids}
    status = await haproxy.stop()
    assert status is not None and not haproxy.is_running()
    assert not [p for p in pids if alive(p)]


async def test_rejected_reload_keeps_the_old_worker(haproxy: HAProxyProcess) -> None:
    before = await haproxy.start()
    Path(haproxy.config).write_text(Path(haproxy.config).read_text() + "    bogus 1\n")
    with pytest.raises(ReloadError, match="rejected the new configuration"):
        await haproxy.reload(timeout=5)
    after = await haproxy.master.show_proc()
    assert after.worker_pids == before.worker_pids
    assert after.failed_reloads == before.failed_reloads + 1


async def test_start_failure_reports_haproxy_output(root: Path) -> None:
    cfg = root / "broken.cfg"
    cfg.write_text("global\n    nonsense_keyword\n")
    proc = HAProxyProcess(cfg, root / "master.sock", haproxy_bin=HAPROXY)
    with pytest.raises(StartError, match="nonsense_keyword"):
        await proc.start()
    assert not proc.is_running()


async def test_killed_worker_takes_the_master_down_and_supervise_restarts(
    haproxy: HAProxyProcess,
) -> None:
    first = await haproxy.start()
    restarted: list[ProcInfo] = []

    async def on_restart(info: ProcInfo) -> None:
        restarted.append(info)

    task = asyncio.create_task(haproxy.supervise(backoff=0.05, on_restart=on_restart))
    os.kill(first.worker_pids[0], signal.SIGKILL)
    for _ in range(100):
        if restarted:
            break
        await asyncio.sleep(0.05)
    assert restarted, haproxy.log_tail()
    assert "exit-on-failure" in haproxy.log_tail(50)  # 2.6: the master exits too (137)
    assert restarted[0].master_pid != first.master_pid and haproxy.restarts == 1
    assert not alive(first.master_pid)
    await haproxy.stop()
    await asyncio.wait_for(task, 5)  # supervise returns after stop()
    assert not [p for p in restarted[0].all_pids if alive(p)]


async def test_an_haproxy_that_keeps_dying_is_started_again_at_the_slowest_pace(
    haproxy: HAProxyProcess, caplog: pytest.LogCaptureFixture,
) -> None:
    """Past max_restarts exits in the window the supervisor gave up for good: an HAProxy
    OOM-killed six times in five minutes stayed down until some app changed."""
    info = await haproxy.start()
    restarted: list[ProcInfo] = []

    async def on_restart(new: ProcInfo) -> None:
        restarted.append(new)

    task = asyncio.create_task(haproxy.supervise(
        max_restarts=1, backoff=0.05, max_backoff=0.2, on_restart=on_restart))
    for kill in range(3):  # the last two are over the budget
        os.kill(info.master_pid, signal.SIGKILL)
        for _ in range(200):
            if len(restarted) > kill:
                break
            await asyncio.sleep(0.05)
        assert len(restarted) == kill + 1, haproxy.log_tail()
        info = restarted[-1]
        assert info.master_pid == haproxy.pid and haproxy.is_running()
    assert not task.done()
    assert "starting it again every 0.2s while it keeps exiting" in caplog.text
    await haproxy.stop()
    await asyncio.wait_for(task, 5)


async def test_a_master_exiting_mid_reload_is_started_again_at_once(
    haproxy: HAProxyProcess, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The new worker killed while the reload was being confirmed: the master exits, and
    # the confirmation waited its whole timeout (30 s) on a dead socket, holding the
    # lock the supervisor needed to start HAProxy again. Seen under load in CI.
    first = await haproxy.start()
    restarted: list[ProcInfo] = []

    async def on_restart(info: ProcInfo) -> None:
        restarted.append(info)

    confirming = asyncio.Event()

    async def unconfirmed(timeout: float = 30.0, poll: float = 0.05) -> ProcInfo:
        confirming.set()
        await asyncio.sleep(3600)  # the master's answer never comes
        raise AssertionError("unreachable")

    supervisor = asyncio.create_task(haproxy.supervise(backoff=0.05, on_restart=on_restart))
    monkeypatch.setattr(haproxy.master, "reload", unconfirmed)
    reload = asyncio.create_task(haproxy.reload(timeout=3600))
    # The reload holds the lock, waiting for its confirmation.
    await asyncio.wait_for(confirming.wait(), 30)
    os.kill(first.worker_pids[0], signal.SIGKILL)
    with pytest.raises(ReloadError, match="master exited"):
        await asyncio.wait_for(reload, 10)
    for _ in range(100):
        if restarted:
            break
        await asyncio.sleep(0.05)
    assert restarted and restarted[0].master_pid != first.master_pid, haproxy.log_tail()
    await haproxy.stop()
    await asyncio.wait_for(supervisor, 5)


async def test_graceful_stop_with_lingering_old_worker(haproxy: HAProxyProcess) -> None:
    await haproxy.start()
    port = int(Path(haproxy.config).read_text().split("127.0.0.1:")[1].split()[0])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\n")  # an unfinished request keeps the old worker busy
    await writer.drain()
    runtime = RuntimeClient(str(Path(haproxy.config).parent / "admin.sock"))
    for _ in range(200):  # the worker has accepted it (the CLI's own is not counted)
        if int((await runtime.show_info())["CurrConns"]) >= 1:
            break
        await asyncio.sleep(0.05)
    info = await haproxy.reload()
    assert info.old_workers, "the busy worker should linger as an old worker"
    pids = info.all_pids
    await haproxy.stop(graceful=True, timeout=0.5)
    assert not [p for p in pids if alive(p)]
    writer.close()


CHILD = """
import asyncio, sys
from pathlib import Path
from servicerouter.haproxy.process import HAProxyProcess

async def main():
    p = HAProxyProcess(sys.argv[1], sys.argv[2], haproxy_bin=sys.argv[3])
    info = await p.start()
    print(" ".join(map(str, info.all_pids)), flush=True)
    await asyncio.sleep(30)

asyncio.run(main())
"""


async def test_haproxy_dies_with_its_supervisor(root: Path) -> None:
    """If servicerouter is SIGKILLed, PR_SET_PDEATHSIG stops the master and its workers."""
    cfg = root / "haproxy.cfg"
    cfg.write_text(config(root, free_port()))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(cfg), str(root / "master.sock"), HAPROXY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 10)
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        child.kill()
        await child.wait()
    for _ in range(100):
        if not any(alive(p) for p in pids):
            break
        await asyncio.sleep(0.05)
    assert not [p for p in pids if alive(p)]
