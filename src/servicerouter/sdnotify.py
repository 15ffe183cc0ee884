"""systemd's readiness protocol (``Type=notify``): a datagram to ``$NOTIFY_SOCKET``.

With ``Type=simple`` systemd counts the service started the moment it forks, so a
``systemctl reload`` right after ``systemctl start`` sent SIGHUP to a Python still
importing its modules, whose default action for SIGHUP is to exit. With
``Type=notify`` systemd holds a reload (and ``start``'s return) until ``READY=1``,
which the daemon sends once its signal handlers and web listener are in place.

The protocol (sd_notify(3)): newline-separated ``KEY=VALUE`` lines in one datagram to
the unix socket named by ``NOTIFY_SOCKET``; a leading ``@`` names an abstract socket.
No dependency is needed for that. The variable is taken out of the environment when
read, so HAProxy and reload commands do not inherit it (``NotifyAccess=main`` would
ignore them anyway). Without the variable every call is a no-op; a send that fails is
logged once and never raised (later calls are no-ops): readiness is a courtesy to the
init system, not a reason to stop routing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("servicerouter")

ENV = "NOTIFY_SOCKET"


class Notifier:
    def __init__(self, address: str | None) -> None:
        self.address = address

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier for ``$NOTIFY_SOCKET``, removed from the environment."""
        return cls(os.environ.pop(ENV, None) or None)

    def send(self, **fields: str) -> bool:
        """``send(READY="1", STATUS="…")``; True when the datagram went out."""
        if not self.address:
            return False
        text = "".join(f"{key}={value.replace(chr(10), ' ')}\n"
                       for key, value in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(1.0)
                sock.sendto(text.encode(), target)
        except OSError as exc:
            log.warning("cannot tell systemd %s through NOTIFY_SOCKET %s: %s; no more "
                        "notifications", ", ".join(fields), self.address, exc)
            self.address = None
            return False
        return True
