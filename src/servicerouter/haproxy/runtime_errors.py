"""What the Runtime API client raises: one base class naming the socket and carrying a
result per command, and what each kind of failure says about what was applied."""

from __future__ import annotations

from collections.abc import Sequence

from servicerouter.haproxy.runtime_parse import CommandResult, Status

__all__ = ["HAProxyRuntimeError", "RuntimeCommandError", "RuntimeProtocolError",
           "RuntimeUnavailable", "RuntimeUncertain", "RuntimeUncertainError",
           "raise_for_errors"]


class HAProxyRuntimeError(Exception):
    """Base class; ``address`` names the socket, ``results`` has one entry per command."""

    def __init__(
        self, message: str, address: str = "", results: Sequence[CommandResult] = ()
    ) -> None:
        super().__init__(message)
        self.address = address
        self.results = list(results)


class RuntimeUnavailable(HAProxyRuntimeError):
    """Could not connect: the commands in ``not_sent`` were certainly not applied."""

    @property
    def not_sent(self) -> list[str]:
        return [r.command for r in self.results if r.status is Status.NOT_SENT]


class RuntimeUncertain(HAProxyRuntimeError):
    """Written but not (completely) answered: ``uncertain`` may or may not be applied."""

    @property
    def uncertain(self) -> list[str]:
        return [r.command for r in self.results if r.status is Status.UNKNOWN]


RuntimeUncertainError = RuntimeUncertain


class RuntimeCommandError(HAProxyRuntimeError):
    """HAProxy answered with an error (raised by the helpers and :func:`raise_for_errors`)."""


class RuntimeProtocolError(HAProxyRuntimeError):
    """HAProxy's answer did not have the expected shape."""


def raise_for_errors(results: Sequence[CommandResult], address: str = "") -> None:
    errors = [r for r in results if r.status is Status.ERROR]
    if errors:
        shown = "; ".join(f"{r.command!r}: {r.reply.strip()}" for r in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise RuntimeCommandError(
            f"HAProxy runtime socket {address} refused {len(errors)} command(s): {shown}{more}",
            address,
            results,
        )
