"""What :class:`~.state.ClusterState` looks up among its apps by a value, kept as apps
come, are redefined and go, so that one app's change never makes it read every app:
the order the apps came in (the order of its ``apps`` dict, which decides who claims
first when several are judged again at once), and the apps naming each certificate
file and bind address (whose facts, changing, re-admit them). Pure."""

from __future__ import annotations

from .model import App


class AppIndex:
    def __init__(self) -> None:
        self._came = 0
        self.order: dict[str, int] = {}  # app id -> when it came: the state's dict order
        self.certs: dict[str, set[str]] = {}  # HAPROXY_{n}_SSL_CERT -> the apps naming it
        self.addresses: dict[str, set[str]] = {}  # HAPROXY_{n}_BIND_ADDR -> the apps

    def update(self, before: App | None, after: App | None) -> None:
        """An app came (``before`` None), was redefined, or went (``after`` None)."""
        if before is not None:
            for index, value in self._named(before):
                named = index[value]
                named.discard(before.id)
                if not named:
                    del index[value]
            if after is None:
                del self.order[before.id]
        if after is not None:
            if after.id not in self.order:
                self.order[after.id] = self._came
                self._came += 1
            for index, value in self._named(after):
                index.setdefault(value, set()).add(after.id)

    def _named(self, app: App) -> list[tuple[dict[str, set[str]], str]]:
        """Each file and address ``app`` names, once however many of its ports name it
        (an app's HTTP and HTTPS ports on one file: taken out twice, the second raised)."""
        certs = {s.options.ssl_cert for s in app.services if s.options.ssl_cert is not None}
        addresses = {s.options.bind_address for s in app.services
                     if s.options.bind_address != "*"}
        return [*((self.certs, c) for c in certs), *((self.addresses, a) for a in addresses)]

    def naming(self, certs: set[str], addresses: set[str]) -> set[str]:
        """The apps naming one of these certificate files or bind addresses."""
        return {a for c in certs for a in self.certs.get(c, ())} \
            | {a for b in addresses for a in self.addresses.get(b, ())}
