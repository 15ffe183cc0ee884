"""Stop requests: start-up steps that must not wait them out, and one-shot commands
that end cleanly on them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from .entry import stop_received

T = TypeVar("T")


async def unless_stopped(step: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Run ``step`` until it ends or ``stop`` is set; then cancel it and return None.

    The first full sync and the start-up check of a config left on disk can take a
    --marathon-timeout (30 s) per attempt or haproxy -c's 60 s: a SIGTERM meanwhile
    stopped the daemon only after them, while a supervisor waited (systemd: 90 s)."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


class Stopped(Exception):
    """A one-shot command stopped by a signal; ``status`` is its exit status (128 + the
    signal's number, as a shell reports a process the signal killed)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.status = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where SIGTERM or SIGINT cancels ``main`` and raises
    :class:`Stopped` once it has unwound.

    SIGTERM's default action killed ``render`` and ``sync`` outright: a sync stopped
    between writing the map files and the config, or during the reload, left a half
    applied change; cancelling instead runs their ``finally`` and ``except`` blocks, which
    put the files back. A second signal while they do is ignored: they are short.

    One entry.py noted while the command started (entry.catch_stops) stops it here,
    before ``main`` runs at all. Whatever handled the signals before is theirs again
    after (entry.py's: a signal then is noted, not the default action's -15)."""
    received: list[int] = []
    stops = (signal.SIGTERM, signal.SIGINT)

    async def stoppable() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(signum: int) -> None:
            if not received:
                received.append(signum)
                task.cancel()

        before = {sig: signal.getsignal(sig) for sig in stops}
        for sig in stops:
            loop.add_signal_handler(sig, stop, sig)
        try:
            early = stop_received()
            if early is not None:  # while Python loaded the command: nothing was begun
                received.append(early)
                main.close()
                raise asyncio.CancelledError
            return await main
        finally:
            for sig in stops:
                loop.remove_signal_handler(sig)
                if before[sig] is not None:
                    signal.signal(sig, before[sig])

    try:
        return asyncio.run(stoppable())
    except BaseException:
        if received:  # whatever the cancellation became on its way out
            raise Stopped(received[0]) from None
        raise
