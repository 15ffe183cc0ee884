"""Layout + slot table → ``haproxy.cfg``, through the Jinja2 templates. Pure.

The templates live in the top-level ``templates/`` folder (shipped inside the
wheel as ``servicerouter/templates``). ``--templates DIR`` puts an operator's
folder in front: any file found there replaces the built-in one.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .. import __version__
from ..layout import BackendShape, Layout, Settings, SlotTable
from ..model import Endpoint, EndpointState
from ..naming import slot_name

FREE_SLOT_ADDRESS = "127.0.0.1:1"


class TemplateError(ValueError):
    """A template that cannot be loaded or rendered; names the file and line."""


def builtin_templates() -> Path:
    """The packaged templates (wheel), or the repository's (editable install)."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "templates"
    if packaged.is_dir():
        return packaged
    return here.parent.parent / "templates"


def hostport(ip: str, port: int) -> str:
    """An address as HAProxy parses it: ``1.2.3.4:80``, ``*:80``, ``ipv6@::1:80``."""
    if ip in ("*", ""):
        return f"*:{port}"
    if _is_ipv6(ip):
        return f"ipv6@{ip}:{port}"
    return f"{ip}:{port}"


@functools.lru_cache(maxsize=65536)
def _is_ipv6(ip: str) -> bool:
    return isinstance(ipaddress.ip_address(ip), ipaddress.IPv6Address)


def server_params(shape: BackendShape, slot: str) -> str:
    """Keywords every server of a backend carries (also used by ``add server``)."""
    opts = shape.service.options
    params = []
    if opts.health_check:
        params += ["check", "inter", str(opts.health_check_interval_ms)]
    if opts.sticky:
        params += ["cookie", slot]
    return "".join(f" {p}" for p in params)


@dataclass(frozen=True, slots=True)
class _Server:
    name: str
    address: str
    disabled: bool
    params: str


@functools.lru_cache(maxsize=8)
def template_environment(template_dirs: tuple[str, ...]) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(template_dirs)),
        autoescape=False,  # HAProxy config, not HTML; every value is validated first
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def _slot_lines(shape: BackendShape, slots: Sequence[Endpoint | None]
                ) -> list[tuple[str, str, bool, str]]:
    """(name, address, disabled, params) per slot. A free slot is disabled at
    127.0.0.1:1; a draining endpoint starts disabled and the post-reload reconcile
    sets it to drain (there is no config keyword for drain)."""
    out = []
    # Only sticky servers' parameters name the slot: compute the others once.
    shared = None if shape.service.options.sticky else server_params(shape, "")
    for i in range(shape.slots):
        name = slot_name(i + 1)
        held = slots[i] if i < len(slots) else None
        params = shared if shared is not None else server_params(shape, name)
        if held is None:
            out.append((name, FREE_SLOT_ADDRESS, True, params))
        else:
            out.append((name, hostport(held.ip, held.port),
                        held.state is EndpointState.DRAIN, params))
    return out


class _BackendView:
    """What templates see as ``b``. ``server_lines`` is what the built-in template
    prints (joined in Python: at 160,000 slots a Jinja loop costs ~0.3 s);
    ``servers`` is built only for a template that loops over it."""

    def __init__(self, shape: BackendShape, slots: Sequence[Endpoint | None]) -> None:
        opts = shape.service.options
        self.name = shape.name
        self.app_id = shape.app_id
        self.port = shape.service.port
        self.bind = opts.bind_address
        self.mode = opts.mode.value
        self.balance = opts.balance
        self.ssl_cert = opts.ssl_cert
        self.sticky = opts.sticky
        self.httpchk = opts.health_check_path if opts.health_check else None
        self.options = opts
        self._slots = _slot_lines(shape, slots)
        self.server_lines = "\n".join(
            f"    server {n} {a}{' disabled' if d else ''}{p}" for n, a, d, p in self._slots)

    @functools.cached_property
    def servers(self) -> list[_Server]:
        return [_Server(*s) for s in self._slots]


def _vhost_routes(layout: Layout) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = []
    for name, shape in sorted(layout.items()):
        opts = shape.service.options
        if opts.vhosts:
            routes.append({"acl": f"host_{name}", "backend": name, "hosts": opts.vhosts,
                           "path": opts.path, "redirect_to_https": opts.redirect_to_https})
    # Longer paths first, so /api/v2 wins over /api for the same host.
    routes.sort(key=lambda r: -len(r["path"] or ""))
    return routes


def render(layout: Layout, table: SlotTable, settings: Settings,
           templates: str | Path | None = None, *, mode_templates: str | None = None,
           extra: dict[str, Any] | None = None) -> str:
    """The complete ``haproxy.cfg`` text. Raises :class:`TemplateError`.

    ``mode_templates`` (a folder under the built-in templates, e.g. ``mesosdns``)
    replaces built-in files by name for a rendering mode, below the operator's
    ``templates``; ``extra`` adds names to the templates' context."""
    mode = (str(builtin_templates() / mode_templates),) if mode_templates else ()
    dirs = ((str(templates),) if templates else ()) + mode + (str(builtin_templates()),)
    routes = _vhost_routes(layout)
    certs = list(dict.fromkeys([*settings.ssl_certs, *(
        s.service.options.ssl_cert for s in layout.values()
        if s.service.options.vhosts and s.service.options.ssl_cert)]))
    context = {
        "version": __version__,
        "settings": settings,
        "backends": [_BackendView(layout[n], table.get(n, [])) for n in sorted(layout)],
        "vhost_routes": routes,
        "certs": certs,
        "hostport": hostport,
        **(extra or {}),
    }
    try:
        return template_environment(dirs).get_template("haproxy.cfg.j2").render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {exc.filename or exc.name}:{exc.lineno}: {exc.message}"
                            ) from None
    except Exception as exc:  # an operator's template can raise anything
        where = _template_location(exc) or f"templates in {' then '.join(dirs)}"
        raise TemplateError(f"{where}: {type(exc).__name__}: {exc}") from None


def _template_location(exc: BaseException) -> str | None:
    """``template FILE:LINE`` of the innermost template frame of a rendering error.

    Jinja rewrites tracebacks so that template code appears as frames whose
    file is the template's path and whose line is the template's line.
    """
    where = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            where = f"template {filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where
