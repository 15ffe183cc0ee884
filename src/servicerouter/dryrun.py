"""``servicerouter run --dry-run``: the daemon's decisions printed, nothing touched.

Stand-ins for the three things the engine acts through. Each prints what it
would do, one line per action on stdout, and changes nothing: no runtime
command reaches a socket, no file is written, no HAProxy is started or
reloaded. Candidate configs are still checked with the real ``haproxy -c``
(piped to it, nothing written), so "would reload" means HAProxy would accept it.

The imaginary HAProxy holds exactly what was printed: ``show servers state``
is answered from the engine's own slot table, so reconciliation finds nothing
to repair and only real changes from Marathon produce output.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import pool
from .haproxy.process import validate
from .haproxy.runtime import CommandResult, Status
from .haproxy.runtime_parse import ADMF_FDRAIN, ADMF_FMAINT, ServerState
from .model import EndpointState
from .naming import slot_name
from .servercheck import state_line

if TYPE_CHECKING:
    from .engine import Engine

PREFIX = "dry-run:"


def _print(line: str) -> None:
    print(f"{PREFIX} {line}", file=sys.stdout, flush=True)


class DryRunRuntime:
    """Prints runtime commands; answers queries from the engine's slot table."""

    def __init__(self, socket_path: str, out: Callable[[str], None] = _print) -> None:
        self.socket_path = socket_path
        self.out = out
        self.engine: Engine | None = None

    async def execute(self, commands: Sequence[str]) -> list[CommandResult]:
        for c in commands:
            self.out(f"would send to {self.socket_path}: {c}")
        return [CommandResult(c, Status.OK, "") for c in commands]

    async def show_info(self) -> dict[str, str]:
        return {"Name": "HAProxy (dry run: not contacted)"}

    async def show_servers_state(self, backend: str | None = None) -> list[ServerState]:
        only = None if backend is None else {backend}
        return expected_servers(self.engine, only) if self.engine else []

    async def servers_state_chunks(self, backends: Sequence[str] | None = None
                                   ) -> AsyncIterator[list[str]]:
        # A slice builds only its own backends' servers (all of them: ~260 ms at
        # 10,000 apps, and the periodic read has ten slices an interval there).
        only = None if backends is None else set(backends)
        states = expected_servers(self.engine, only) if self.engine else []
        yield ["1", *map(state_line, states)]

    async def query(self, command: str) -> str:
        """``show map <file>`` (range mode): the maps of the engine's layout."""
        if self.engine is None or not command.startswith("show map "):
            return ""
        name = Path(command.split(" ", 2)[2]).name
        entries = pool.used_maps(self.engine.layout, self.engine.config.settings).get(name, {})
        return "".join(f"0x0 {k} {v}\n" for k, v in sorted(entries.items()))

    def socket_missing(self) -> bool:
        return False

    def reset(self) -> None:
        pass


def expected_servers(engine: Engine, only: Set[str] | None = None
                     ) -> list[ServerState]:
    """What HAProxy would hold had every printed command been applied (``only``: in
    these backends, by HAProxy's name)."""
    states = []
    for b_id, (key, shape) in enumerate(sorted(engine.layout.items()), start=1):
        name = shape.name  # range mode: an app may live in a spare backend
        if only is not None and name not in only:
            continue
        slots = engine.table.get(key, [])
        for i in range(shape.slots):
            e = slots[i] if i < len(slots) else None
            admin = (ADMF_FMAINT if e is None else
                     ADMF_FDRAIN if e.state is EndpointState.DRAIN else 0)
            states.append(ServerState(
                backend_id=b_id, backend=name, server_id=i + 1, server=slot_name(i + 1),
                addr=e.ip if e else "127.0.0.1", port=e.port if e else 1, op_state=2,
                admin_state=admin, weight=1, initial_weight=1, check_status=0,
                check_result=0, check_health=0, check_state=0))
    return states


class DryRunConfig:
    """Validates candidates for real; prints instead of writing them."""

    def __init__(self, path: Path, haproxy_bin: str = "haproxy",
                 out: Callable[[str], None] = _print) -> None:
        self.path = path
        self.haproxy_bin = haproxy_bin
        self.out = out
        # Range mode: haproxy -c opens the map files a candidate names; they go in a
        # private temporary folder (removed at exit), never in the real one.
        self._maps: tuple[str, Path] | None = None
        self.changes = asyncio.Lock()  # (the reload pipeline takes the file's turn)

    async def validate(self, text: str) -> tuple[bool, str]:
        if self._maps is not None:
            real, private = self._maps
            text = text.replace(f"{real.rstrip('/')}/", f"{private}/")
        result = await validate(text, self.haproxy_bin)
        return result.ok, result.output

    def write_maps(self, directory: str, files: dict[str, str]) -> None:
        if self._maps is None:
            self._maps = (directory, Path(tempfile.mkdtemp(prefix="servicerouter-dry-run-")))
        for name, text in files.items():
            (self._maps[1] / name).write_text(text)
        self.out(f"would write {len(files)} map files in {directory}")

    def read(self) -> str | None:
        return None  # nothing to adopt: a dry run starts from an empty HAProxy

    def remove(self) -> None:
        pass  # a dry run never wrote it

    def loaded(self) -> None:
        pass  # nor recorded it as unconfirmed

    def unconfirmed(self) -> str | None:
        return None

    def cleanup(self) -> None:
        if self._maps is not None:
            shutil.rmtree(self._maps[1], ignore_errors=True)
            self._maps = None

    def write(self, text: str) -> None:
        self.out(f"would write {self.path} ({len(text.splitlines())} lines, valid)")

    def keep_rejected(self, text: str) -> Path:
        rejected = self.path.with_name(self.path.name + ".rejected")
        self.out(f"haproxy -c rejects the candidate config; would keep it at {rejected} "
                 "(not written)")
        return rejected


class DryRunReloader:
    def __init__(self, how: str, out: Callable[[str], None] = _print) -> None:
        self.how = how
        self.out = out

    async def start(self, engine: Engine) -> None:
        if isinstance(engine.runtime, DryRunRuntime):
            engine.runtime.engine = engine
        self.out("watching Marathon; printing what would be done, touching nothing")

    def starts_haproxy(self) -> bool:
        return False  # a dry run checks every candidate with haproxy -c

    def problem(self) -> str | None:
        return None

    async def reload(self) -> None:
        self.out(f"would reload HAProxy ({self.how})")

    async def stop(self) -> None:
        pass


def dry_run_parts(args: Any, socket_path: str) -> tuple[DryRunRuntime, DryRunConfig,
                                                         DryRunReloader]:
    how = ("start HAProxy or reload it through its master socket" if args.start_haproxy else
           f"through {args.haproxy_master_socket}" if args.haproxy_master_socket else
           f"with {args.reload_command!r}" if args.reload_command else
           "with the init system's reload")
    return (DryRunRuntime(socket_path), DryRunConfig(Path(args.haproxy_config), args.haproxy_bin),
            DryRunReloader(how))
