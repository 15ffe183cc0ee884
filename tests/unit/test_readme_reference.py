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


ROW_DEFAULT = re.compile(
    r"^\| `(--[a-z0-9-]+)[^|]*\| `SERVICEROUTER_[A-Z0-9_]+` \| ([^|]*) \|", re.M)


def test_reference_rows_give_the_default_help_gives() -> None:
    """The table's default column is what ``--help`` shows (with no variable set), and a
    row sits in a section whose commands all have the flag (a `run`-only flag in the
    common table would be documented for `render` and `sync` too)."""
    wrong = []
    for command, headings in SECTIONS.items():
        actions = {o: a for a in subcommand(command)._actions for o in a.option_strings}
        for heading in headings:
            for flag, default in ROW_DEFAULT.findall(section(heading)):
                action = actions.get(flag)
                if action is None:
                    wrong.append(f"{flag} is under {heading!r} but `{command}` has no such flag")
                    continue
                shown = re.search(r", default (.*)\]$", action.help or "", re.S)
                help_default = " ".join(shown.group(1).split()) if shown else "?"
                if default.strip() != help_default:
                    wrong.append(f"{flag} ({command}): README says {default.strip()!r}, "
                                 f"--help says {help_default!r}")
    assert not wrong, "README.md flag tables disagree with --help: " + "; ".join(
        sorted(set(wrong)))


BRIDGE_MODES = {"all": (None, bridge.INSTALL, bridge.REFRESH), "install": (bridge.INSTALL,),
                "refresh": (bridge.REFRESH,)}


def test_bridge_reference_names_the_modes_that_have_each_flag() -> None:
    """The bridge table's "modes" column lists exactly the modes whose --help has the flag,
    and it documents no flag that no mode has."""
    has = {mode: help_flags(bridge._parser(mode)) for mode in BRIDGE_MODES["all"]}
    wrong = []
    for row in section("### `haproxy-marathon-bridge`").splitlines():
        m = re.match(r"^\| `(--[a-z0-9-]+)[^|]*\| ([^|]+) \|", row)
        if not m:
            continue
        flag, said = m.group(1), [w.strip() for w in m.group(2).split(",")]
        modes = {mode for word in said for mode in BRIDGE_MODES.get(word, ("?",))}
        real = {mode for mode, flags in has.items() if flag in flags}
        if modes != real:
            wrong.append(f"{flag}: README says {', '.join(said)}; --help has it in "
                         f"{sorted(str(m) for m in real) or 'no mode'}")
    assert not wrong, "README.md's bridge table is wrong: " + "; ".join(wrong)


def test_monitoring_lists_exactly_the_metrics_the_daemon_exports() -> None:
    """Metric names are a contract operators alert on: each exported series family is in
    "Monitoring", with its label names, and the README names no metric that is not
    exported (a renamed or dropped one)."""
    from servicerouter.metrics import RELOAD_REASONS, RELOAD_STAGES, Metrics

    monitoring = section("## Monitoring")
    metrics = Metrics()
    label_names = {getattr(m, "_name", None) or m.name:  # prometheus_client's, or Tally's
                   set(getattr(m, "_labelnames", None) or getattr(m, "labelnames", ()))
                   for m in vars(metrics).values() if hasattr(m, "describe")}
    exported: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        name = family.name + ("_info" if family.type == "info" else
                              "_total" if family.type == "counter" else "")
        exported[name] = label_names.get(family.name, set()) | (
            {"version"} if family.type == "info" else set())
    missing, labels = [], []
    for name, names in sorted(exported.items()):
        said = re.search(rf"`{name}(?:\{{([^}}`]*)\}})?`", monitoring)
        if said is None:
            missing.append(name)
        elif {w.split("=")[0] for w in (said.group(1) or "").split(",") if w} != names:
            labels.append(f"{name} has labels {sorted(names)}, README says {said.group(0)}")
    unknown = sorted(set(re.findall(r"\bservicerouter_[a-z_]*[a-z]", README)) - set(exported)
                     - {"servicerouter_build"})
    reasons = [r for r in (*RELOAD_REASONS, *RELOAD_STAGES) if f"`{r}`" not in monitoring]
    assert not (missing or labels or unknown or reasons), (
        f"README.md 'Monitoring' misses metrics {missing}, label values {reasons}; "
        f"wrong labels: {labels}; names metrics nobody exports: {unknown}")


def test_readme_command_examples_are_accepted() -> None:
    """Operators paste the README's `servicerouter run|render|sync` examples (code blocks,
    continuation lines joined) into units and crontabs: each must parse, and each
    --marathon must be one URL (a comma list is for SERVICEROUTER_MARATHON only; on the
    command line it failed every minute from cron)."""
    import shlex

    from servicerouter.marathon.client import parse_marathon_url

    wrong, seen = [], 0
    for block in re.finditer(r"^ *```(sh|console|cron)\n(.*?)^ *```", README, re.M | re.S):
        for line in re.sub(r"\\\n\s*", " ", block.group(2)).splitlines():
            words = shlex.split(line, comments=True)
            start = next((i for i, w in enumerate(words) if re.fullmatch(
                r"(.*/)?servicerouter", w) and words[i + 1:i + 2] in (["run"], ["render"],
                                                                     ["sync"])), None)
            if start is None:
                continue
            argv = []
            for word in words[start + 1:]:
                if word in (">", "|", "&&", ";"):
                    break
                if word not in ("...", "…"):
                    argv.append(word)
            seen += 1
            try:
                args = cli.build_parser({}).parse_args(argv)
                for url in args.marathon or []:
                    parse_marathon_url(url)
            except SystemExit:
                wrong.append(f"{line.strip()!r}: refused by the argument parser")
            except Exception as exc:  # reported with the example
                wrong.append(f"{line.strip()!r}: {exc}")
    assert seen >= 4, "the README's command examples were not found"
    assert not wrong, "README.md examples that do not work: " + "; ".join(wrong)
