"""The README's command reference stays in sync with --help.

Each subcommand's flags must appear as table rows (``| `--flag ...` |``) in the
README sections that document it, and the README must not document flags that
no longer exist. A failure names the flags and the section to add them to, so a
new flag from another branch is one table row away from passing.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from servicerouter import bridge, cli
from servicerouter.envflags import env_name

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
COMMON = "### Flags of `run`, `render` and `sync`"
SECTIONS = {  # subcommand -> README sections whose tables document its flags
    "run": [COMMON, "### `servicerouter run`"],
    "render": [COMMON, "### `servicerouter render`"],
    "sync": [COMMON, "### `servicerouter sync`"],
}
ROW_FLAG = re.compile(r"^\| `(--[a-z0-9-]+)[^`]*`(?: / `(--[a-z0-9-]+)`)?", re.M)


def section(heading: str) -> str:
    start = README.find("\n" + heading + "\n")
    assert start >= 0, f"README.md has no section {heading!r}"
    end = re.search(r"^#{2,3} ", README[start + len(heading) + 2:], re.M)
    return README[start:start + len(heading) + 2 + (end.start() if end else len(README))]


def documented(headings: list[str]) -> set[str]:
    flags: set[str] = set()
    for heading in headings:
        for first, second in ROW_FLAG.findall(section(heading)):
            flags.update(f for f in (first, second) if f)
    return flags


def help_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings
            if o.startswith("--") and o not in ("--help", "--version")}


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser({})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_reference_lists_every_flag_of(command: str) -> None:
    missing = sorted(help_flags(subcommand(command)) - documented(SECTIONS[command]))
    assert not missing, (
        f"README.md does not document these `servicerouter {command}` flags: "
        f"{', '.join(missing)}. Add a row '| `--flag ARG` | `SERVICEROUTER_…` | default | "
        f"what |' under {SECTIONS[command][-1]!r} (or {COMMON!r} if run, render and sync "
        "all have it).")


def test_reference_lists_no_flag_that_does_not_exist() -> None:
    real = set().union(*(help_flags(subcommand(c)) for c in SECTIONS))
    stale = sorted(documented([h for hs in SECTIONS.values() for h in hs]) - real)
    assert not stale, f"README.md documents flags --help does not have: {', '.join(stale)}"


def test_reference_rows_name_the_right_variable() -> None:
    wrong = []
    for heading in {h for hs in SECTIONS.values() for h in hs}:
        for row in section(heading).splitlines():
            m = re.match(r"^\| `(--[a-z0-9-]+)[^|]*\| `(SERVICEROUTER_[A-Z0-9_]+)`", row)
            if m and env_name(m.group(1)) != m.group(2):
                wrong.append(f"{m.group(1)}: {m.group(2)} (is {env_name(m.group(1))})")
    assert not wrong, "README.md names the wrong variable: " + "; ".join(wrong)


def test_bridge_reference_lists_every_flag() -> None:
    flags: set[str] = set()
    for mode in (None, bridge.INSTALL, bridge.REFRESH):
        flags |= help_flags(bridge._parser(mode))
    missing = sorted(flags - documented(["### `haproxy-marathon-bridge`"]))
    assert not missing, (f"README.md does not document these haproxy-marathon-bridge flags: "
                         f"{', '.join(missing)} (add rows under '### `haproxy-marathon-bridge`')")
