"""``--allow-label-templates``: each app with marathon-lb template labels is
rendered and validated (``haproxy -c``) alone before it joins the others, so
one broken template leaves only its own app out.

Rendering an app alone is pure (:func:`render_alone`); the validation is the
engine's ``ConfigWriter.validate`` (the edge). Results are cached per app definition,
so an app is validated once per change, not once per sync.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .haproxy.render import TemplateError, render
from .layout import Settings, build_layout, desired_state
from .model import App

Validate = Callable[[str], Awaitable[tuple[bool, str]]]
_OUT = "app left out (or kept at its last good state), others applied"


def has_templates(app: App) -> bool:
    return any(s.options.raw_templates for s in app.services)


def render_alone(app: App, settings: Settings, templates: Path | None) -> str:
    """The config HAProxy would get with ``app`` as the only app (raises TemplateError)."""
    alone = replace(settings, stats_port=0, app_id_port=0)
    layout, table = build_layout(desired_state([app], alone), {}, alone)
    return render(layout, table, alone, templates)


class TemplateVetting:
    def __init__(self, settings: Settings, templates: Path | None, validate: Validate) -> None:
        self.settings = settings
        self.templates = templates
        self.validate = validate
        self._seen: dict[tuple[str, tuple[object, ...]], str | None] = {}

    async def vet(self, apps: Sequence[App]) -> tuple[list[App], dict[str, str]]:
        """(apps that may join, app id → why each other one was left out)."""
        ok: list[App] = []
        bad: dict[str, str] = {}
        for app in apps:
            problem = await self._problem(app) if has_templates(app) else None
            if problem is None:
                ok.append(app)
            else:
                bad[app.id] = problem
        return ok, bad

    async def _problem(self, app: App) -> str | None:
        key = (app.id, tuple(s.options for s in app.services))
        if key not in self._seen:
            if len(self._seen) > 10_000:
                self._seen.clear()  # bounded: a changed app adds a key, never removes one
            self._seen[key] = await self._check(app)
        return self._seen[key]

    async def _check(self, app: App) -> str | None:
        try:
            text = render_alone(app, self.settings, self.templates)
        except TemplateError as exc:  # callers print "app ID: " before it
            return f"{str(exc).removeprefix(f'app {app.id}: ')}; {_OUT}"
        valid, output = await self.validate(text)
        if not valid:
            return (f"its template labels do not validate alone (haproxy -c: "
                    f"{output.strip()[:500]}); {_OUT}")
        return None
