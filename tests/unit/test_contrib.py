"""contrib/: the Prometheus scrape config, alerts and Grafana dashboard stay true to metrics.py.

Metric names and labels are a contract (metrics.py): an alert on a renamed metric
never fires, silently.  These tests compare every ``servicerouter_*`` name the
alerts and the dashboard use with what the daemon really exports, and, when
``promtool`` is installed, validate the files and run the alerts' unit tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from servicerouter.metrics import Metrics, Tally, Timings

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "contrib" / "prometheus"
SCRAPE = PROM / "scrape.yml"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "servicerouter.json"

# Labels Prometheus adds or histograms carry, valid on any servicerouter series.
TARGET_LABELS = {"job", "instance"}
NAME = re.compile(r"\bservicerouter_[a-z0-9_]*[a-z0-9]\b")
SELECTOR = re.compile(r"\b(servicerouter_[a-z0-9_]*[a-z0-9])\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
PROMTOOL_TIMEOUT = 60

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None,
    reason="promtool is not on PATH (Debian: apt-get install prometheus); "
           "the contrib files are then only checked for metric names")


def _yaml() -> ModuleType:
    return pytest.importorskip(
        "yaml", reason="PyYAML is not installed and is deliberately not a dependency; "
                       "promtool validates the YAML files instead (see the promtool tests)")


# --- what the daemon exports ----------------------------------------------------------


def exported_series_names() -> set[str]:
    """Every series name the real exposition can contain (histograms expanded)."""
    text = generate_latest(Metrics().registry).decode()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        if kind == "histogram":
            names.update(f"{name}{s}" for s in ("_bucket", "_sum", "_count"))
        elif kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")  # older prometheus_client prints the base name
        else:
            names.add(name)
    return names


def exported_labels() -> dict[str, set[str]]:
    """Label names per series name, from the metric objects themselves: a labelled
    metric with no children yet (runtime_commands) has no samples to read them from."""
    labels: dict[str, set[str]] = {}
    names = exported_series_names()
    for metric in vars(Metrics()).values():
        if isinstance(metric, (Tally, Timings)):  # ours: read at scrape time
            own, base = set(metric.labelnames), metric.name
        elif isinstance(metric, MetricWrapperBase):
            own = set(metric._labelnames)  # stable private attribute since 0.1
            base = metric._name
        else:
            continue
        for name in names:
            if name == base or (name.startswith(base + "_")
                                and name[len(base) + 1:] in {"total", "bucket", "sum",
                                                             "count", "info"}):
                labels[name] = own | (
                    {"le"} if name.endswith("_bucket") else set()) | (
                    {"version"} if name.endswith("_info") else set())
    return labels


# --- what the contrib files use ---------------------------------------------------------


def alert_exprs(text: str) -> list[str]:
    """The ``expr:`` of each rule, without a YAML parser (PyYAML is not a dependency).

    Handles ``expr: <one line>`` and block scalars (``expr: >-`` + indented lines).
    """
    exprs: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:- )?expr:\s*(.*)$", line)
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest and rest[0] not in ">|":
            exprs.append(rest.strip("'\""))
            continue
        body = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            body.append(nxt.strip())
        exprs.append(" ".join(b for b in body if b))
    return exprs


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard())
    return exprs


def check_names_and_labels(where: str, exprs: list[str]) -> None:
    names = exported_series_names()
    labels = exported_labels()
    problems = []
    for expr in exprs:
        used = set(NAME.findall(expr))
        for name in sorted(used - names):
            problems.append(f"{name!r} is not exported (in {expr!r})")
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER_LABEL.findall(matchers):
                if name in labels and label not in labels[name] | TARGET_LABELS:
                    problems.append(f"{name} has no label {label!r} (in {expr!r})")
        allowed = TARGET_LABELS.union(*(labels.get(n, set()) for n in used))
        for group in GROUPING.findall(expr):
            for label in (g.strip() for g in group.split(",")):
                if label and label not in allowed:
                    problems.append(f"grouping label {label!r} is on none of "
                                    f"{sorted(used)} (in {expr!r})")
    assert not problems, f"{where} does not match metrics.py:\n" + "\n".join(problems)


# --- the contract -----------------------------------------------------------------------


def test_exposition_is_read_the_way_prometheus_sees_it() -> None:
    names = exported_series_names()
    assert {"servicerouter_reloads_total", "servicerouter_event_to_apply_seconds_bucket",
            "servicerouter_slots", "servicerouter_build_info"} <= names
    assert "servicerouter_reloads" not in names
    assert exported_labels()["servicerouter_slots"] == {"state"}


def test_alert_rules_use_only_exported_metrics_and_labels() -> None:
    text = ALERTS.read_text()
    exprs = alert_exprs(text)
    assert len(exprs) == len(re.findall(r"^\s*- alert:", text, re.MULTILINE)), \
        "every alert has an expr"
    assert all(exprs), "an alert's expr is empty"
    check_names_and_labels("alerts.yml", exprs)
    # names mentioned in descriptions and comments must exist too
    missing = set(NAME.findall(text)) - exported_series_names()
    assert not missing, f"alerts.yml mentions metrics that do not exist: {sorted(missing)}"


def test_scrape_config_mentions_only_exported_metrics() -> None:
    missing = set(NAME.findall(SCRAPE.read_text())) - exported_series_names()
    assert not missing, f"scrape.yml mentions metrics that do not exist: {sorted(missing)}"


def test_alert_unit_tests_feed_exported_series() -> None:
    series = re.findall(r"series:\s*'([^']*)'", ALERTS_TEST.read_text())
    assert series
    check_names_and_labels("alerts_test.yml", series)


def test_alert_unit_tests_cover_the_key_alerts_both_ways() -> None:
    text = ALERTS_TEST.read_text()
    blocks = re.split(r"^\s*- eval_time:", text, flags=re.MULTILINE)[1:]
    firing: set[str] = set()
    quiet: set[str] = set()
    for block in blocks:
        name = re.search(r"alertname:\s*(\w+)", block)
        assert name, block
        (quiet if re.search(r"exp_alerts:\s*\[\]", block) else firing).add(name.group(1))
    key = {"ServicerouterReloadStorm", "ServicerouterReloadFailing",
           "ServicerouterMarathonUnreachable", "ServicerouterSlotsNearlyExhausted"}
    assert key <= firing, f"never shown firing: {sorted(key - firing)}"
    assert key <= quiet, f"never shown quiet: {sorted(key - quiet)}"
    defined = set(re.findall(r"^\s*- alert:\s*(\w+)", ALERTS.read_text(), re.MULTILINE))
    assert firing | quiet <= defined


def test_dashboard_is_valid_and_uses_only_exported_metrics() -> None:
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 40
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in d["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert 'instance=~"$instance"' in t["expr"], (panel["title"], t["expr"])
    check_names_and_labels("servicerouter.json", dashboard_exprs())


def test_dashboard_shows_every_exported_metric() -> None:
    used = set()
    for expr in dashboard_exprs():
        used.update(NAME.findall(expr))
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    exported = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported_series_names()}
    assert not exported - bases, (
        f"metrics.py exports {sorted(exported - bases)} but the dashboard does not show them")


# --- YAML structure (only with PyYAML, which is optional) -------------------------------


def test_yaml_files_parse_and_alerts_are_complete() -> None:
    yaml = _yaml()
    scrape = yaml.safe_load(SCRAPE.read_text())
    jobs = {j["job_name"]: j for j in scrape["scrape_configs"]}
    assert set(jobs) == {"servicerouter", "haproxy"}
    assert all(j["relabel_configs"][0]["target_label"] == "instance" for j in jobs.values())
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert "for" in rule, rule["alert"]
    assert yaml.safe_load(ALERTS_TEST.read_text())["tests"]


# --- promtool -----------------------------------------------------------------------------


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True,
                          timeout=PROMTOOL_TIMEOUT, cwd=ROOT, check=False)


@needs_promtool
def test_promtool_accepts_the_scrape_config() -> None:
    r = run_promtool("check", "config", SCRAPE)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    r = run_promtool("check", "rules", ALERTS)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_alert_unit_tests_pass() -> None:
    r = run_promtool("test", "rules", ALERTS_TEST)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Grafana's variables become plain values; with no input series every query
    # returns nothing, so promtool's only complaint can be a parse error.
    tests = [{"expr": e.replace("$instance", ".*").replace("$__rate_interval", "1m"),
              "eval_time": "1m", "exp_samples": []} for e in dashboard_exprs()]
    spec = tmp_path / "dashboard_test.yml"
    spec.write_text(json.dumps(  # JSON is YAML
        {"tests": [{"interval": "1m", "input_series": [], "promql_expr_test": tests}]}))
    r = run_promtool("test", "rules", spec)
    assert r.returncode == 0, r.stdout + r.stderr


# --- the scrape targets are where the daemon and HAProxy listen ---------------------------


def run_defaults() -> dict[str, Any]:
    import argparse

    from servicerouter import cli

    sub = next(a for a in cli.build_parser({})._actions
               if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.default for a in sub.choices["run"]._actions}


def scrape_jobs() -> dict[str, tuple[str, set[int]]]:
    """job_name -> (metrics_path, ports of its static targets), without a YAML parser."""
    jobs: dict[str, tuple[str, set[int]]] = {}
    for block in re.split(r"^\s*- job_name:", SCRAPE.read_text(), flags=re.M)[1:]:
        name = block.split()[0]
        path = re.search(r"^\s*metrics_path:\s*(\S+)", block, re.M)
        ports = {int(p) for p in re.findall(r"^\s*- [\w.\[\]:-]+:(\d+)\s*$", block, re.M)}
        jobs[name] = (path.group(1) if path else "/metrics", ports)
    return jobs


def test_scrape_targets_use_the_daemons_and_haproxys_default_ports() -> None:
    defaults = run_defaults()
    jobs = scrape_jobs()
    assert jobs["servicerouter"] == ("/metrics", {defaults["listen"][1]}), \
        "the daemon serves /metrics on --listen"
    # templates/stats.j2: HAProxy's exporter answers /metrics on --stats-port
    assert "use-service prometheus-exporter if { path /metrics }" in \
        (ROOT / "templates" / "stats.j2").read_text()
    assert jobs["haproxy"] == ("/metrics", {defaults["stats_port"]}), \
        "HAProxy's exporter is on --stats-port"
