"""The shipped Prometheus alert rules, their runbook, the example configurations and the
Grafana dashboard, checked with the real promtool and amtool (Debian's `prometheus` and
`prometheus-alertmanager` packages) and by reading the files.

- `promtool check rules` accepts etc/prometheus/smbgw-alerts.yml;
- `promtool test rules tests/rules/*.test.yml` passes, and covers every alert with a
  case where it fires and a case where it stays silent;
- every alert follows the conventions (name, severity, static summary, templated
  description, runbook_url to a section that exists in docs/runbook.md);
- every metric the rules and the dashboard use is documented in docs/metrics.md;
- every PromQL expression of the dashboard parses (promtool 2.42 has no `check query`:
  each one becomes a recording rule in a generated file for `promtool check rules`);
- a real Alertmanager on the example configuration notifies each share's highest quota
  level only (the lower levels are inhibited, never another share's or node's).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "etc/prometheus/smbgw-alerts.yml"
RULE_TESTS = sorted((REPO / "tests/rules").glob("*.test.yml"))
RUNBOOK = REPO / "docs/runbook.md"
METRICS_DOC = REPO / "docs/metrics.md"
DASHBOARD = REPO / "etc/grafana/smbgw.json"
PROMETHEUS_EXAMPLE = REPO / "etc/prometheus/prometheus.yml.example"
ALERTMANAGER_EXAMPLE = REPO / "etc/prometheus/alertmanager.yml.example"
RUNBOOK_BASE = "https://github.com/smbgw/smbgw-agent/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning"}
# How Grafana would expand the dashboard's variables for one query.
DASHBOARD_VARIABLES = {
    "job": "smbgw", "instance": ".*", "share": ".*", "datasource": "prometheus",
    "__rate_interval": "1m", "__interval": "15s", "__range": "1h",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} missing: apt-get install prometheus prometheus-alertmanager")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=REPO)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> dict[str, str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", RUNBOOK.read_text(), re.MULTILINE)
    return {github_anchor(h): h for h in headings}


def documented_metrics() -> dict[str, str]:
    """{metric: status} from the tables of docs/metrics.md."""
    found: dict[str, str] = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = re.match(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|[^|]*\|[^|]*\|\s*([^|]+?)\s*\|", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def base_metric(name: str, documented: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_created"):
        if name.endswith(suffix) and name.removesuffix(suffix) in documented:
            return name.removesuffix(suffix)
    return name


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers followed by `{`, `[`, `)` or space,
    not functions, keywords or label names inside braces)."""
    without_strings = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_matchers)
    names = set(re.findall(r"\b(smbgw_[a-z0-9_]+|up|ALERTS)\b(?!\s*\()", without_groupings))
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expand(expr: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in DASHBOARD_VARIABLES, f"unknown dashboard variable ${name} in {expr}"
        return DASHBOARD_VARIABLES[name]

    expanded = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", substitute, expr)
    assert "$" not in expanded, expanded
    return expanded


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    queries: list[tuple[str, str]] = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}", expand(target["expr"])))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert match, f"variable {variable['name']}: only label_values(selector, label) is used: {query}"
        queries.append((f"variable {variable['name']}", expand(match.group(1))))
    return queries


# ---- promtool on the rules ----------------------------------------------------------------


@pytest.mark.integration
def test_promtool_check_rules_accepts_the_shipped_rules() -> None:
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@pytest.mark.integration
def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no tests/rules/*.test.yml"
    result = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_unit_tests_cover_every_alert_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert [str(RULES.relative_to(REPO))] == [
            str((path.parent / f).resolve().relative_to(REPO)) for f in document["rule_files"]
        ], f"{path.name} must test the shipped rule file"
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"
    assert (firing | silent) - names == set(), "tests of alerts that do not exist"


# ---- conventions ----------------------------------------------------------------------------


def test_alert_conventions() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Smbgw(?:[A-Z][a-z0-9]*)+", name), f"{name}: CamelCase with the Smbgw prefix"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert "{{" not in rule["annotations"]["summary"], f"{name}: summary must be static"
        assert re.search(r"\{\{.*\$(labels|value).*\}\}", rule["annotations"]["description"]), (
            f"{name}: description must be templated"
        )
        assert "for" in rule, f"{name}: every alert needs a `for:` (flapping)"


def test_runbook_urls_point_at_existing_sections() -> None:
    anchors = runbook_anchors()
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        anchor = url.removeprefix(RUNBOOK_BASE)
        assert anchor in anchors, f"{rule['alert']}: no heading with anchor #{anchor} in docs/runbook.md"
        assert anchor == github_anchor(rule["alert"]), f"{rule['alert']}: link its own section"


def test_runbook_has_meaning_check_fix_for_every_alert_and_no_stale_sections() -> None:
    text = RUNBOOK.read_text()
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL))
    names = {rule["alert"] for rule in alert_rules()}
    assert {s for s in sections if s.startswith("Smbgw")} == names
    for name in names:
        for part in ("**Meaning.**", "**Check.**", "**Fix.**"):
            assert part in sections[name], f"runbook section {name} lacks {part}"


def test_metrics_used_by_rules_and_dashboard_are_documented() -> None:
    documented = documented_metrics()
    assert documented, "no metric table found in docs/metrics.md"
    used: dict[str, str] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used[base_metric(name, documented)] = f"alert {rule['alert']}"
    for where, expr in dashboard_queries():
        for name in metric_names(expr):
            used[base_metric(name, documented)] = where
    used.pop("ALERTS", None)  # Prometheus's own series of the alert rules
    undocumented = {name: where for name, where in used.items() if name not in documented}
    assert undocumented == {}
    assert {"smbgw_share_file_valid", "smbgw_vip_present", "up"} <= set(used)


def test_metric_name_extraction() -> None:
    expr = 'sum by (share) (rate(smbgw_reconcile_total{job="smbgw", share=~"up"}[5m])) / on (instance) up'
    assert metric_names(expr) == {"smbgw_reconcile_total", "up"}


# ---- example configurations ---------------------------------------------------------------


@pytest.mark.integration
def test_example_prometheus_config_loads_the_rules() -> None:
    result = run(tool("promtool"), "check", "config", str(PROMETHEUS_EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smbgw-alerts.yml" in result.stdout
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["smbgw"]


@pytest.mark.integration
def test_example_alertmanager_config_is_valid_and_inhibits_real_alerts() -> None:
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER_EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    names = {rule["alert"] for rule in alert_rules()}
    text = ALERTMANAGER_EXAMPLE.read_text()
    for match in re.findall(r"alertname=~?\\?\"([^\"\\]+)", text):
        for name in match.split("|"):
            if not name.endswith("+"):
                assert name in names, f"alertmanager example names unknown alert {name}"


QUOTA_ALERTS = ("SmbgwShareQuotaWarning", "SmbgwShareQuotaHigh", "SmbgwShareQuotaCritical",
                "SmbgwShareQuotaFillingUp")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alertmanager_states(url: str) -> dict[tuple[str, str, str], str]:
    """{(instance, share, alertname): active | suppressed} from Alertmanager's v2 API."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        alerts = json.loads(response.read().decode())
    return {(a["labels"]["instance"], a["labels"]["share"], a["labels"]["alertname"]): a["status"]["state"]
            for a in alerts}


def test_quota_level_alerts_share_one_shape() -> None:
    """The three level alerts are one expression on the share's own levels (only the level
    differs), with the severities the runbook documents; the draft's single ratio is gone."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(QUOTA_ALERTS) <= set(rules)
    shapes = {rules[name]["expr"].replace(f'level="{level}"', 'level="L"')
              for name, level in (("SmbgwShareQuotaWarning", "warning"), ("SmbgwShareQuotaHigh", "high"),
                                  ("SmbgwShareQuotaCritical", "critical"))}
    assert len(shapes) == 1, shapes
    assert "smbgw_share_quota_threshold_ratio" in shapes.pop()
    assert [rules[n]["labels"]["severity"] for n in QUOTA_ALERTS] == ["warning", "warning", "critical", "warning"]
    assert "smbgw_share_quota_warn_ratio" not in RULES.read_text(), "the draft ratio is replaced by the levels"


@pytest.mark.integration
def test_example_alertmanager_notifies_only_the_highest_quota_level(tmp_path: Path) -> None:
    """Every quota alert a share can have at once, posted to a real Alertmanager running
    the example configuration: the lower levels are inhibited by the highest one, the
    prediction only by the critical level, and nothing crosses to another share or node."""
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
    firing = {  # (instance, share): the quota alerts Prometheus fires for it
        ("pve1:9945", "full"): QUOTA_ALERTS,
        ("pve1:9945", "high"): ("SmbgwShareQuotaWarning", "SmbgwShareQuotaHigh", "SmbgwShareQuotaFillingUp"),
        ("pve1:9945", "warn"): ("SmbgwShareQuotaWarning", "SmbgwShareQuotaFillingUp"),
        ("pve2:9945", "full"): ("SmbgwShareQuotaWarning",),  # same share name, other node
    }
    expected = {(i, s, a): "active" for (i, s), names in firing.items() for a in names}
    for muted in (("pve1:9945", "full", "SmbgwShareQuotaWarning"), ("pve1:9945", "full", "SmbgwShareQuotaHigh"),
                  ("pve1:9945", "full", "SmbgwShareQuotaFillingUp"), ("pve1:9945", "high", "SmbgwShareQuotaWarning")):
        expected[muted] = "suppressed"
    now = datetime.now(UTC)
    body = json.dumps([
        {"labels": {"alertname": name, "severity": severity[name], "job": "smbgw", "instance": instance,
                    "share": share},
         "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}
        for (instance, share), names in firing.items() for name in names
    ]).encode()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "alertmanager.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [tool("prometheus-alertmanager"), f"--config.file={ALERTMANAGER_EXAMPLE}",
             f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--cluster.listen-address="],  # a single instance, no gossip port
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        states: dict[tuple[str, str, str], str] = {}
        deadline = time.monotonic() + 30
        posted = False
        while time.monotonic() < deadline and states != expected:
            assert proc.poll() is None, log.read_text()
            try:
                if not posted:
                    request = urllib.request.Request(f"{url}/api/v2/alerts", data=body, method="POST",
                                                     headers={"Content-Type": "application/json"})
                    urllib.request.urlopen(request, timeout=5).close()
                    posted = True
                # the inhibitor learns the source alerts asynchronously: poll until settled
                states = alertmanager_states(url)
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        assert states == expected, log.read_text()[-2000:]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---- dashboard ------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "smbgw-overview"
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = [panel["title"] for panel in dashboard_panels()]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    assert len(dashboard_queries()) >= 30


@pytest.mark.integration
def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expr} for index, (_, expr) in enumerate(queries)
    ]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, (
        result.stdout + result.stderr + "\n" + "\n".join(f"{i}: {w}: {e}" for i, (w, e) in enumerate(queries))
    )
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


@pytest.mark.integration
def test_a_broken_dashboard_expression_is_caught(tmp_path: Path) -> None:
    """The parse check is not vacuous: promtool rejects a broken expression."""
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:query_0", "expr": "sum by (share (smbgw_share_up)"}]}]}))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode != 0
