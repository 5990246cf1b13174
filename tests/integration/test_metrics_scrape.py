"""A live scrape of the real agent (real smbd on loopback) with shares of every kind:
`promtool check metrics` accepts it, every contract metric the agent exports today is
there with its type and labels, the values say what the agent did, and docs/metrics.md
tells the truth about what is exported and what is only planned.

Shares: a valid one with a connected client, a read-only one, one whose file was broken
after it went live (kept on its last good spec), a file that never was valid, a share of
a mode no plugin provides, and one placed on another node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from devtools.sandbox import Sandbox, free_port
from tests.support.agent import AgentProcess, served, wait_for, write_share
from tests.support.procs import private_sandbox

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
METRICS_DOC = REPO / "docs/metrics.md"
# What Prometheus 2.42 sends: it gets OpenMetrics when the exporter offers it.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

# Contract metrics (docs/metrics.md) and the two extra ones the agent exports today:
# sample name -> (type of its family in the text format, label names).
EXPORTED_TODAY: dict[str, tuple[str, set[str]]] = {
    "smbgw_agent_info": ("gauge", {"version", "node"}),
    "smbgw_agent_config_valid": ("gauge", set()),
    "smbgw_reconcile_total": ("counter", set()),
    "smbgw_reconcile_errors_total": ("counter", set()),
    "smbgw_reconcile_duration_seconds_bucket": ("histogram", {"le"}),
    "smbgw_reconcile_duration_seconds_sum": ("histogram", set()),
    "smbgw_reconcile_duration_seconds_count": ("histogram", set()),
    "smbgw_last_reconcile_success_timestamp_seconds": ("gauge", set()),
    "smbgw_share_file_valid": ("gauge", {"file"}),
    "smbgw_share_info": ("gauge", {"share", "mode", "path"}),
    "smbgw_share_up": ("gauge", {"share"}),
    "smbgw_share_used_bytes": ("gauge", {"share"}),
    "smbgw_share_sessions": ("gauge", {"share"}),
    "smbgw_share_open_files": ("gauge", {"share"}),
    "smbgw_service_active": ("gauge", {"unit"}),
    "smbgw_collector_success": ("gauge", {"collector"}),
    "smbgw_cluster_fs_writable": ("gauge", set()),
}
NOT_EXPORTED_YET: set[str] = set()
CLUSTER_ONLY = {  # exported only with [ctdb]: tests/integration/test_ctdb_cluster.py scrapes them
    "smbgw_ctdb_node_healthy", "smbgw_ctdb_node_state", "smbgw_ctdb_recovery_mode", "smbgw_vip_holder",
}
AD_ONLY = {  # exported only with [ad]: tests/integration/test_ad_member.py scrapes them
    "smbgw_ad_joined", "smbgw_ad_healthy", "smbgw_ad_check_success", "smbgw_ad_problem",
    "smbgw_ad_clock_skew_seconds", "smbgw_ad_last_check_timestamp_seconds", "smbgw_ad_last_join_success",
}
LXC_ONLY = {  # exported only with a share of mode = "lxc": tests/integration/test_mode_lxc.py scrapes it
    "smbgw_lxc_container_running",
}
VM_ONLY = {  # exported only with a share of mode = "vm": tests/integration/test_mode_vm.py scrapes them
    "smbgw_vm_running", "smbgw_vm_guest_agent_up",
}


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    family_type: str


def agent_toml(port: int, node: str = "sandbox") -> str:
    return (
        f'[agent]\nnode = "{node}"\nallowed_roots = ["/srv"]\nresync_interval = "60s"\n\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )


def start_agent_with_metrics(box: Sandbox, env: dict[str, str] | None = None) -> tuple[AgentProcess, int]:
    """The agent on a free metrics port (never the default 9945: tests run side by side)."""
    port = free_port()
    (box.root / "etc/smbgw/agent.toml").write_text(agent_toml(port))
    agent = AgentProcess(box, env=env)
    try:
        agent.start()
        wait_for(lambda: scrape(port) is not None, 20)
    except BaseException:
        agent.stop()  # by its pid; nothing is left running when the start fails
        raise
    return agent, port


def scrape(port: int, accept: str | None = None) -> tuple[str, str] | None:
    """(content type, body) of GET /metrics, or None while nothing listens."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers.get("Content-Type", ""), response.read().decode()
    except OSError:
        return None


def samples(port: int) -> list[Sample]:
    result = scrape(port)
    assert result is not None, "the agent does not serve metrics"
    found = []
    for family in parse_text(result[1]):
        for sample in family.samples:
            found.append(Sample(sample.name, dict(sample.labels), sample.value, family.type))
    return found


def by_name(port: int) -> dict[str, list[Sample]]:
    grouped: dict[str, list[Sample]] = {}
    for sample in samples(port):
        grouped.setdefault(sample.name, []).append(sample)
    return grouped


def value(port: int, name: str, **labels: str) -> float | None:
    for sample in samples(port):
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


@dataclass
class Scraped:
    box: Sandbox
    agent: AgentProcess
    port: int


@pytest.fixture(scope="module")
def scraped() -> Iterator[Scraped]:
    with private_sandbox() as box:
        agent, port = None, 0
        try:
            user = box.user
            for name in ("finance", "docs", "keep"):
                box.share_dir(name)
            write_share(
                box, "finance.toml", f'path = "/srv/smb/finance"\ncomment = "Finance"\nvalid_users = ["{user}"]\n'
            )
            write_share(box, "docs.toml", 'path = "/srv/smb/docs"\nread_only = true\n')
            write_share(box, "keep.toml", 'path = "/srv/smb/keep"\n')
            write_share(box, "bad.toml", 'path = "/srv/smb/bad\n')  # unterminated string
            write_share(box, "ct.toml", 'path = "/srv/smb/ct"\nmode = "lxc"\n\n[lxc]\nvmid = 2100\n')
            write_share(box, "elsewhere.toml", 'path = "/srv/smb/elsewhere"\nnode = "pve9"\n')
            agent, port = start_agent_with_metrics(box)
            wait_for(lambda: served(box, "keep") and served(box, "finance") and served(box, "docs"), 30)
            # keep.toml goes bad after its share went live: it keeps its last good spec
            write_share(box, "keep.toml", 'path = "/srv/smb/keep"\nread_olny = true\n')
            wait_for(lambda: value(port, "smbgw_share_file_valid", file="keep.toml") == 0, 20)
            wait_for(
                lambda: all(
                    value(port, "smbgw_collector_success", collector=c) == 1
                    for c in ("core", "usage", "mode_native", "smbstatus")
                ),
                30,
            )
            yield Scraped(box, agent, port)
        finally:
            if agent is not None:
                agent.stop()


def test_promtool_check_metrics_accepts_a_live_scrape(scraped: Scraped) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: apt-get install prometheus")
    result = scrape(scraped.port)
    assert result is not None
    content_type, body = result
    assert content_type.startswith("text/plain"), content_type
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60, check=False
    )
    # promtool prints one line per problem (naming, HELP, types); no output means clean.
    assert check.returncode == 0 and check.stdout == "" and check.stderr == "", check.stdout + check.stderr
    assert "smbgw_share_file_valid{" in body and "smbgw_share_sessions{" in body


def test_openmetrics_scrape_as_prometheus_asks_for_it(scraped: Scraped) -> None:
    result = scrape(scraped.port, PROMETHEUS_ACCEPT)
    assert result is not None
    content_type, body = result
    assert content_type.startswith("application/openmetrics-text"), content_type
    families = {family.name: family for family in parse_openmetrics(body)}
    assert families["smbgw_agent"].type == "info"
    assert families["smbgw_reconcile"].type == "counter"
    assert families["smbgw_reconcile_duration_seconds"].type == "histogram"
    assert body.rstrip().endswith("# EOF")


def test_contract_metrics_exported_today_have_their_types_and_labels(scraped: Scraped) -> None:
    grouped = by_name(scraped.port)
    for name, (family_type, labels) in EXPORTED_TODAY.items():
        assert name in grouped, f"{name} missing from the scrape"
        for sample in grouped[name]:
            assert sample.family_type == family_type, f"{name}: {sample.family_type}, expected {family_type}"
            assert set(sample.labels) == labels, f"{name}: labels {sorted(sample.labels)}, expected {sorted(labels)}"
    for name in NOT_EXPORTED_YET:
        assert name not in grouped, f"{name} is exported now: update docs/metrics.md and this test"
    buckets = [s.labels["le"] for s in grouped["smbgw_reconcile_duration_seconds_bucket"]]
    assert buckets[-1] == "+Inf"


def test_values_say_what_the_agent_did(scraped: Scraped) -> None:
    port = scraped.port
    valid = {s.labels["file"]: s.value for s in by_name(port)["smbgw_share_file_valid"]}
    assert valid == {
        "finance.toml": 1, "docs.toml": 1, "keep.toml": 0, "bad.toml": 0, "ct.toml": 0, "elsewhere.toml": 1,
    }
    info = {s.labels["share"]: (s.labels["mode"], s.labels["path"]) for s in by_name(port)["smbgw_share_info"]}
    assert info == {
        "finance": ("native", "/srv/smb/finance"),
        "docs": ("native", "/srv/smb/docs"),
        "keep": ("native", "/srv/smb/keep"),  # its last good spec
    }
    up = {s.labels["share"]: s.value for s in by_name(port)["smbgw_share_up"]}
    assert up == {"finance": 1, "docs": 1, "keep": 1}
    assert served(scraped.box, "keep"), "the share of a broken file keeps being served"
    assert set(s.labels["share"] for s in by_name(port)["smbgw_share_used_bytes"]) == set(info)
    assert all(s.value > 0 for s in by_name(port)["smbgw_share_used_bytes"])
    assert value(port, "smbgw_service_active", unit="smbd.service") == 1
    assert value(port, "smbgw_agent_config_valid") == 1
    assert value(port, "smbgw_agent_info", node="sandbox") == 1
    assert (value(port, "smbgw_reconcile_total") or 0) >= 2
    assert value(port, "smbgw_reconcile_errors_total") == 0
    assert (value(port, "smbgw_reconcile_duration_seconds_count") or 0) >= 2
    assert abs((value(port, "smbgw_last_reconcile_success_timestamp_seconds") or 0) - time.time()) < 600
    collectors = {s.labels["collector"]: s.value for s in by_name(port)["smbgw_collector_success"]}
    assert collectors == {"core": 1, "usage": 1, "mode_native": 1, "smbstatus": 1, "quota": 1, "backup": 1, "vip": 1,
                          "ctdb": 1, "ad": 1, "mode_lxc": 1, "mode_vm": 1}


def test_sessions_count_a_connected_client(scraped: Scraped) -> None:
    box = scraped.box
    client = subprocess.Popen(
        ["smbclient", "-p", str(box.port), "//127.0.0.1/finance", "-U", f"{box.user}%{box.password}"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # smbstatus is read in the background every 15 s
        wait_for(lambda: value(scraped.port, "smbgw_share_sessions", share="finance") == 1, 40, 0.2)
        assert value(scraped.port, "smbgw_share_sessions", share="docs") == 0
    finally:
        assert client.stdin is not None
        client.stdin.close()
        try:
            client.wait(10)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait(5)


def documented_status() -> dict[str, str]:
    status: dict[str, str] = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = re.match(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|[^|]*\|[^|]*\|\s*([^|]+?)\s*\|", line)
        if match:
            status[match.group(1)] = match.group(2)
    return status


def test_docs_metrics_md_is_honest_about_what_is_exported(scraped: Scraped) -> None:
    documented = documented_status()
    assert set(documented.values()) <= {"exported"} | {s for s in documented.values() if s.startswith("planned: ")}
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", s.name) for s in samples(scraped.port)}
    # A family the agent exports but has no series for yet (no plugin reported health, no
    # job ran) is still announced with its TYPE line.
    text = scrape(scraped.port)
    assert text is not None
    families |= {f.name for f in parse_text(text[1])}
    names = {s.name for s in samples(scraped.port)}
    for metric, status in documented.items():
        if metric == "up":
            continue  # Prometheus's, not the agent's
        if status == "exported" and metric not in CLUSTER_ONLY | AD_ONLY | LXC_ONLY | VM_ONLY:
            # A counter family without series is announced by its base name (`..._total` without
            # the suffix), as the text format does.
            base = re.sub(r"_total$", "", metric)
            assert metric in names or metric in families or base in families, \
                f"docs say {metric} is exported; the scrape lacks it"
        else:
            assert metric not in names, f"docs say {metric} is {status!r}, but the agent exports it"
    for name in names:
        base = re.sub(r"_(bucket|sum|count|created)$", "", name)
        assert name in documented or base in documented, f"{name} is exported but not in docs/metrics.md"
    assert set(EXPORTED_TODAY) - {n for n in EXPORTED_TODAY if n.startswith("smbgw_reconcile_duration_seconds_")} <= {
        m for m, s in documented.items() if s == "exported"
    }
    assert {m for m, s in documented.items() if s.startswith("planned")} == NOT_EXPORTED_YET
