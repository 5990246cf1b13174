"""End to end with real servers on loopback: the agent in front of a real smbd, a real
Prometheus scraping it and evaluating the shipped alert rules, and a real Alertmanager
receiving Prometheus's alerts, read back through Alertmanager's v2 API.

Breaking a share file makes SmbgwShareFileInvalid arrive at Alertmanager; fixing the file
resolves it. On the way: a healthy node fires nothing, every rule evaluates without
error on live data, and every query of the Grafana dashboard runs against the live
Prometheus.

Prometheus scrapes and evaluates every second and loads a copy of
etc/prometheus/smbgw-alerts.yml in which every `for:` is rewritten to 0s, so that the
test takes seconds instead of minutes. The expressions, labels and annotations are the
shipped ones (asserted below); the hold durations are covered by `promtool test rules`
(tests/rules/smbgw-alerts.test.yml). Alertmanager runs the shipped example configuration
(etc/prometheus/alertmanager.yml.example: receivers without notifiers, so nothing leaves
the machine). All three listen on free loopback ports with their data in a temporary
directory and are stopped by pid, also when the test fails.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.sandbox import Sandbox, free_port
from tests.integration.test_metrics_scrape import start_agent_with_metrics
from tests.support.agent import AgentProcess, add_agent_config, served, wait_for, write_share
from tests.support.storage import btrfs_image
from tests.unit.test_alert_rules import dashboard_queries

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "etc/prometheus/smbgw-alerts.yml"
ALERTMANAGER_EXAMPLE = REPO / "etc/prometheus/alertmanager.yml.example"
ALERT = "SmbgwShareFileInvalid"


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Server:
    """A real server process on a loopback port, stopped by its pid."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ready(f"{self.url}/-/ready"):
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(stack: contextlib.ExitStack, name: str, argv: list[str], port: int, workdir: Path) -> Server:
    log = workdir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    server = Server(name, proc, port, log)
    stack.callback(server.stop)
    server.wait_ready()
    return server


def rules_for_test() -> dict[str, Any]:
    """The shipped rules with every `for:` set to 0s; nothing else changes."""
    shipped = yaml.safe_load(RULES.read_text())
    rules = copy.deepcopy(shipped)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    for original, changed in zip(shipped["groups"], rules["groups"], strict=True):
        for a, b in zip(original["rules"], changed["rules"], strict=True):
            assert {k: v for k, v in a.items() if k != "for"} == {k: v for k, v in b.items() if k != "for"}
    return rules


def shipped_rule_count() -> int:
    return sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])


@dataclass
class Stack:
    box: Sandbox
    agent: AgentProcess
    agent_port: int
    prometheus: Server
    alertmanager: Server

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = get_json(url)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = get_json(f"{self.prometheus.url}/api/v1/alerts")["data"]["alerts"]
        return alerts

    def alertmanager_alerts(self, alertname: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds with this name, read back through its v2 API."""
        query = urllib.parse.urlencode({"filter": f'alertname="{alertname}"'})
        alerts: list[dict[str, Any]] = get_json(f"{self.alertmanager.url}/api/v2/alerts?{query}")
        return alerts

    def rules(self) -> list[dict[str, Any]]:
        groups = get_json(f"{self.prometheus.url}/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]


def parse_time(stamp: str) -> float:
    """Unix time of an RFC 3339 time stamp as Go writes it (up to 9 fraction digits)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    assert match, stamp
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + zone).timestamp() + float(match.group(2) or 0)


def active(alert: dict[str, Any]) -> bool:
    """Active in Alertmanager: state `active` and not ended (endsAt not in the past)."""
    ends = alert.get("endsAt")
    ended = bool(ends) and parse_time(ends) <= time.time()
    return alert.get("status", {}).get("state") == "active" and not ended


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str]) -> Any:
    try:
        return wait_for(predicate, timeout, 0.1)
    except AssertionError:
        raise AssertionError(f"{what} within {timeout}s; {detail()}") from None


@pytest.fixture
def stack(sandbox: Sandbox, tmp_path: Path) -> Iterator[Stack]:
    for tool in ("prometheus", "prometheus-alertmanager"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing: apt-get install prometheus prometheus-alertmanager")
    with contextlib.ExitStack() as stack:
        sandbox.share_dir("finance")
        write_share(sandbox, "finance.toml", 'path = "/srv/smb/finance"\ncomment = "Finance"\n')
        # The agent's wall clock can be moved (tests/support/clock): 0 s unless a test says.
        clock = {"PYTHONPATH": f"{REPO / 'tests/support/clock'}:{REPO}",
                 "SMBGW_TEST_CLOCK_FILE": str(sandbox.root / "clock-offset")}
        agent, agent_port = start_agent_with_metrics(sandbox, env=clock)
        stack.callback(agent.stop)
        wait_for(lambda: served(sandbox, "finance"), 30)

        am_port = free_port()
        alertmanager = start_server(stack, "alertmanager", [
            "prometheus-alertmanager", f"--config.file={ALERTMANAGER_EXAMPLE}",
            f"--storage.path={tmp_path / 'alertmanager'}", f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",  # no gossip port: a single instance
        ], am_port, tmp_path)

        (tmp_path / "smbgw-alerts.yml").write_text(yaml.safe_dump(rules_for_test(), sort_keys=False))
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": ["smbgw-alerts.yml"],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": "smbgw", "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}]}],
        }))
        prom_port = free_port()
        prometheus = start_server(stack, "prometheus", [
            "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prometheus'}", f"--web.listen-address=127.0.0.1:{prom_port}",
            "--rules.alert.resend-delay=1s",
        ], prom_port, tmp_path)
        yield Stack(sandbox, agent, agent_port, prometheus, alertmanager)


def test_share_file_invalid_alert_reaches_alertmanager_and_resolves(stack: Stack) -> None:
    started = time.monotonic()
    instance = f"127.0.0.1:{stack.agent_port}"

    # Prometheus scrapes the agent and evaluates every shipped rule without error.
    wait_until(
        lambda: [r["value"][1] for r in stack.query('up{job="smbgw"}')] == ["1"],
        20, "the agent was not scraped", stack.prometheus.log_tail,
    )
    wait_until(
        lambda: all(r["health"] == "ok" for r in stack.rules()) and len(stack.rules()) == shipped_rule_count(),
        20, "rules not all evaluated ok",
        lambda: json.dumps([(r["name"], r["health"], r.get("lastError")) for r in stack.rules()]),
    )

    # A healthy node fires nothing (even with every `for:` at 0s), and Alertmanager holds
    # no active share-file alert.
    wait_until(
        lambda: stack.prometheus_alerts() == [], 15, "alerts firing on a healthy node",
        lambda: json.dumps(stack.prometheus_alerts()),
    )
    assert [a for a in stack.alertmanager_alerts(ALERT) if active(a)] == []

    # Break the share file: the alert arrives at Alertmanager.
    broken_at = time.monotonic()
    write_share(stack.box, "finance.toml", 'path = "/srv/smb/finance"\ncomment = "Finance\n')
    arrived = wait_until(
        lambda: [a for a in stack.alertmanager_alerts(ALERT) if active(a)], 20,
        f"{ALERT} did not arrive at Alertmanager",
        lambda: json.dumps(stack.prometheus_alerts()) + "\n" + stack.alertmanager.log_tail(),
    )
    arrival = time.monotonic() - broken_at
    assert len(arrived) == 1, arrived
    alert = arrived[0]
    assert alert["labels"] == {
        "alertname": ALERT, "severity": "warning", "job": "smbgw", "instance": instance, "file": "finance.toml",
    }
    assert alert["annotations"]["summary"] == "smbgw share file invalid"
    assert alert["annotations"]["runbook_url"].endswith("docs/runbook.md#smbgwsharefileinvalid")
    assert alert["annotations"]["description"].startswith(f"Share file finance.toml on {instance} does not validate.")
    assert [r["name"] for r in alert["receivers"]] == ["smbgw-default"]
    assert served(stack.box, "finance"), "the share keeps its last good spec while its file is broken"

    # Fix it: the alert resolves (gone from the active alerts, or ended).
    write_share(stack.box, "finance.toml", 'path = "/srv/smb/finance"\ncomment = "Finance, fixed"\n')
    wait_until(
        lambda: not [a for a in stack.alertmanager_alerts(ALERT) if active(a)], 20,
        f"{ALERT} did not resolve at Alertmanager", lambda: json.dumps(stack.alertmanager_alerts(ALERT)),
    )
    wait_until(lambda: stack.prometheus_alerts() == [], 10, "alerts still firing after the fix",
               lambda: json.dumps(stack.prometheus_alerts()))
    total = time.monotonic() - started
    print(f"{ALERT} at Alertmanager {arrival:.1f} s after the file broke; whole flow {total:.1f} s")


def test_dashboard_queries_run_against_live_prometheus(stack: Stack) -> None:
    wait_until(
        lambda: stack.query("smbgw_share_up"), 20, "no share metrics in Prometheus",
        stack.prometheus.log_tail,
    )
    wait_until(lambda: stack.query("rate(smbgw_reconcile_total[1m])"), 10, "no rate yet", lambda: "")
    results = {}
    for where, expr in dashboard_queries():
        results[where] = stack.query(expr)  # asserts status == success
    by_title = {where.split("'")[1]: result for where, result in results.items() if where.startswith("panel")}
    assert [r["value"][1] for r in by_title["Agents up"]] == ["1"]
    assert [r["value"][1] for r in by_title["Shares served"]] == ["1"]
    assert [r["value"][1] for r in by_title["Shares not served"]] == ["0"]
    assert [r["value"][1] for r in by_title["Invalid share files"]] == ["0"]
    overview = next(result for where, result in results.items() if where.endswith("'Share overview' A"))
    shares = {r["metric"]["share"] for r in overview}
    assert shares == {"finance"}


def test_a_stale_off_host_backup_alerts_at_alertmanager_and_resolves(stack: Stack) -> None:
    """The backup metrics through a real Prometheus and Alertmanager: a share whose newest
    snapshot cannot be sent (its target's password file became readable by others, which
    the agent refuses) while its last off-host copy is three days old (the agent's clock
    moved back when it was made) raises SmbgwOffhostBackupStale; once the file is fixed,
    the retry sends it and the alert resolves."""
    box, alert = stack.box, "SmbgwOffhostBackupStale"
    secret = box.root / "etc/smbgw/secrets/restic"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("e2e password 11\n")
    secret.chmod(0o600)
    add_agent_config(stack.agent, '[backup]\nretry_initial = "1s"\nretry_max = "2s"\n'
                                  '[backup.targets.offsite]\ntype = "restic"\nrepository = "/srv/backup/restic"\n'
                                  'password_file = "/etc/smbgw/secrets/restic"\n')
    with btrfs_image(box.root / "srv/smb/pool", quotas=False) as pool:
        data = pool / "vault"
        subprocess.run(["btrfs", "subvolume", "create", str(data)], check=True, capture_output=True)
        (data / "ledger.txt").write_text("2026\n")
        (box.root / "clock-offset").write_text(f"{-3 * 86400}\n")
        write_share(box, "vault.toml", 'path = "/srv/smb/pool/vault"\n[backup]\nschedule = "daily"\n'
                                       'keep = { last = 5 }\ntarget = "offsite"\n')
        wait_for(lambda: served(box, "vault"), 30)
        assert stack.agent.ctl("snapshot", "vault").returncode == 0
        wait_until(lambda: stack.query('smbgw_backup_last_run_success{kind="offhost",share="vault"} == 1'), 30,
                   "the first off-host copy was not made", lambda: stack.agent.log_text()[-3000:])

        (box.root / "clock-offset").write_text("0\n")
        secret.chmod(0o644)
        assert stack.agent.ctl("snapshot", "vault").returncode == 0
        arrived = wait_until(
            lambda: [a for a in stack.alertmanager_alerts(alert) if active(a)], 40,
            f"{alert} did not arrive at Alertmanager",
            lambda: json.dumps(stack.prometheus_alerts()) + "\n" + stack.agent.log_text()[-2000:],
        )
        labels = arrived[0]["labels"]
        assert (labels["alertname"], labels["share"], labels["severity"]) == (alert, "vault", "warning"), labels
        assert arrived[0]["annotations"]["runbook_url"].endswith("docs/runbook.md#smbgwoffhostbackupstale")
        # Why: the refused password file, counted by reason.
        reasons = wait_until(lambda: stack.query('smbgw_backup_failures_total{kind="offhost",share="vault"}'), 20,
                             "no off-host failure was counted", lambda: stack.agent.log_text()[-2000:])
        assert [r["metric"]["reason"] for r in reasons] == ["password"], reasons

        secret.chmod(0o600)
        wait_until(
            lambda: not [a for a in stack.alertmanager_alerts(alert) if active(a)], 40,
            f"{alert} did not resolve at Alertmanager", lambda: json.dumps(stack.alertmanager_alerts(alert)),
        )
        for name in os.listdir(data / ".snapshots"):
            subprocess.run(["btrfs", "subvolume", "delete", str(data / ".snapshots" / name)], check=False,
                           capture_output=True)
