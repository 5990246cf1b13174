"""The exporter: families built from a pass snapshot, plugin families, failures shown as
failures, TLS served or refused according to the installed prometheus-client."""

from __future__ import annotations

import gzip
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from devtools.sandbox import free_port
from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.observe.background import BackgroundReading
from smbgw_agent.observe.metrics import CollectContext, Exporter, MetricsConfigError
from smbgw_agent.observe.usage import UsageIncomplete, disk_usage, usage_by_share
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.pluginhost import PluginHost

SNAPSHOT: dict[str, Any] = {
    "version": "9.9.9",
    "node": "pve1",
    "passes": 7,
    "pass_errors": 2,
    "last_success": 1_700_000_000.5,
    "config": {"problems": []},
    "files": {"a.toml": {"valid": True}, "bad.toml": {"valid": False}},
    "shares": {
        "a": {"mode": "native", "path": "/srv/a", "state": "served"},
        "b": {"mode": "native", "path": "/srv/b", "state": "failed"},
    },
    "services": {},
}


class Contributor:
    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        family = GaugeMetricFamily("smbgw_demo_thing", "demo", labels=["share"])
        for name in ctx.status["shares"]:
            family.add_metric([name], 1.0)
        success = GaugeMetricFamily("smbgw_collector_success", "x", labels=["collector"])
        success.add_metric(["demo_reading"], 0.0)
        return [family, success]


class ReadingFailed:
    """A plugin whose collect hook answers, but whose own background reading failed."""

    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        success = GaugeMetricFamily("smbgw_collector_success", "x", labels=["collector"])
        success.add_metric(["failing_reader"], 0.0)
        return [success]


class Broken:
    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        raise RuntimeError("boom")


def scrape(exporter: Exporter) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    result: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(exporter.render().decode()):
        for sample in family.samples:
            result.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return result


def make_exporter(plugins: dict[str, object], snapshot: dict[str, Any] | None = SNAPSHOT) -> Exporter:
    host = PluginHost(plugins)
    config = AgentConfig(node="pve1")
    return Exporter(
        status=lambda: snapshot,
        plugins=lambda: host,
        context=lambda status: CollectContext(Paths.under(None), config, Runner(), status),
    )


def test_core_families_follow_the_snapshot() -> None:
    samples = scrape(make_exporter({}))
    assert samples["smbgw_agent_info"] == {(("node", "pve1"), ("version", "9.9.9")): 1.0}
    assert samples["smbgw_reconcile_total"] == {(): 7.0}
    assert samples["smbgw_reconcile_errors_total"] == {(): 2.0}
    assert samples["smbgw_last_reconcile_success_timestamp_seconds"] == {(): 1_700_000_000.5}
    assert samples["smbgw_share_file_valid"] == {(("file", "a.toml"),): 1.0, (("file", "bad.toml"),): 0.0}
    assert samples["smbgw_share_up"] == {(("share", "a"),): 1.0, (("share", "b"),): 0.0}
    assert samples["smbgw_share_info"][(("mode", "native"), ("path", "/srv/b"), ("share", "b"))] == 1.0
    assert samples["smbgw_collector_success"][(("collector", "core"),)] == 1.0


def test_node_resources_health_and_jobs_are_exported() -> None:
    snapshot = {
        **SNAPSHOT,
        "resources": {
            "samba:host": {"plugin": "mode_native", "state": "applied"},
            "vip:192.0.2.10": {"plugin": "vip", "state": "failed"},
        },
        "health": [
            {"plugin": "ad", "resource": "ad", "check": "testjoin", "ok": False, "detail": "no trust"},
            {"plugin": "recycle", "resource": "recycle:purge", "check": "purge", "ok": True, "detail": ""},
        ],
        "jobs": {
            "recycle:purge": {"plugin": "recycle", "state": "succeeded"},
            "create:2100": {"plugin": "mode_lxc", "state": "timed-out"},
            "create:2101": {"plugin": "mode_lxc", "state": "running"},
        },
    }
    samples = scrape(make_exporter({}, snapshot))
    assert samples["smbgw_resource_up"] == {
        (("plugin", "mode_native"), ("resource", "samba:host")): 1.0,
        (("plugin", "vip"), ("resource", "vip:192.0.2.10")): 0.0,
    }
    assert samples["smbgw_health_ok"] == {
        (("check", "testjoin"), ("plugin", "ad"), ("resource", "ad")): 0.0,
        (("check", "purge"), ("plugin", "recycle"), ("resource", "recycle:purge")): 1.0,
    }
    assert samples["smbgw_job_last_success"] == {
        (("job", "recycle:purge"), ("plugin", "recycle")): 1.0,
        (("job", "create:2100"), ("plugin", "mode_lxc")): 0.0,
    }, "a running job has no outcome yet"


def test_plugin_families_and_failures_are_attributed() -> None:
    samples = scrape(make_exporter({"demo": Contributor(), "broken": Broken()}))
    assert samples["smbgw_demo_thing"] == {(("share", "a"),): 1.0, (("share", "b"),): 1.0}
    success = samples["smbgw_collector_success"]
    assert success[(("collector", "demo"),)] == 1.0
    assert success[(("collector", "demo_reading"),)] == 0.0  # merged from the plugin's own family
    assert success[(("collector", "broken"),)] == 0.0
    assert success[(("collector", "core"),)] == 1.0


def test_a_plugins_own_verdict_on_its_reading_wins_over_its_hook_answering() -> None:
    samples = scrape(make_exporter({"failing_reader": ReadingFailed()}))
    assert samples["smbgw_collector_success"][(("collector", "failing_reader"),)] == 0.0


def test_before_the_first_pass_only_identity_is_exported() -> None:
    samples = scrape(make_exporter({}, snapshot=None))
    assert "smbgw_agent_info" in samples
    assert "smbgw_share_up" not in samples


def test_histogram_counts_passes() -> None:
    exporter = make_exporter({})
    exporter.observe_pass(0.02)
    exporter.observe_pass(3.0)
    samples = scrape(exporter)
    assert samples["smbgw_reconcile_duration_seconds_count"] == {(): 2.0}
    assert samples["smbgw_reconcile_duration_seconds_bucket"][(("le", "0.025"),)] == 1.0


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_tls_is_served_on_every_client_version(tmp_path: Path) -> None:
    """Runs under `make test` (current PyPI) and against Debian's prometheus-client 0.16."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    config = AgentConfig(
        node="n", metrics_listen=f"127.0.0.1:{port}", metrics_tls_cert=str(cert), metrics_tls_key=str(key)
    )
    exporter = make_exporter({})
    exporter.start(config, Paths.under(None))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        body = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=10).read()
        assert b"smbgw_reconcile_total 7.0" in body
        with pytest.raises(OSError):  # plain HTTP is not served on the TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        exporter.stop()


def test_background_reading_keeps_last_value_and_reports_failure() -> None:
    calls = {"n": 0}

    def read() -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("smbstatus timed out")
        return calls["n"]

    reading = BackgroundReading("demo", read, interval=3600)
    reading.refresh_now()
    assert (reading.value, reading.ok) == (1, True)
    reading.refresh_now()
    assert (reading.value, reading.ok, reading.error) == (1, False, "smbstatus timed out")
    reading.refresh_now()
    assert (reading.value, reading.ok) == (3, True)


def test_background_reading_never_blocks_a_reader() -> None:
    release = threading.Event()
    reading = BackgroundReading("slow", lambda: release.wait(30), interval=3600)
    reading.start()
    started = time.monotonic()
    assert reading.value is None and not reading.ok  # answered while the read hangs
    assert time.monotonic() - started < 1
    release.set()
    reading.stop()


def test_disk_usage_counts_allocated_bytes_once_per_path(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(b"x" * 100_000)
    (data / "sub" / "b.bin").write_bytes(b"y" * 50_000)
    (data / "link").symlink_to("/usr")  # never followed
    used = disk_usage(data, time.monotonic() + 30)
    assert 150_000 <= used < 150_000 + 64 * 4096
    result, failures = usage_by_share({"one": data, "two": data})
    assert result == {"one": used, "two": used} and failures == []


def test_disk_usage_gives_up_instead_of_reporting_a_partial_number(tmp_path: Path) -> None:
    for index in range(50):
        (tmp_path / f"f{index}").write_text("x")
    with pytest.raises(UsageIncomplete):
        disk_usage(tmp_path, time.monotonic() + 30, max_entries=10)
    result, failures = usage_by_share({"big": tmp_path}, budget=0.0)
    assert result == {} and failures


def test_tls_client_certificate_is_required_when_a_ca_is_set(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    client_cert, client_key = _self_signed(client_dir)
    port = free_port()
    config = AgentConfig(
        node="n", metrics_listen=f"127.0.0.1:{port}", metrics_tls_cert=str(cert), metrics_tls_key=str(key),
        metrics_tls_client_ca=str(client_cert),
    )
    exporter = make_exporter({})
    exporter.start(config, Paths.under(None))
    try:
        anonymous = ssl.create_default_context(cafile=str(cert))
        with pytest.raises((ssl.SSLError, OSError)):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=anonymous, timeout=10).read()
        known = ssl.create_default_context(cafile=str(cert))
        known.load_cert_chain(str(client_cert), str(client_key))
        body = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=known, timeout=10).read()
        assert b"smbgw_agent_info" in body
    finally:
        exporter.stop()


class _SlowCollector:
    """Renders `value`; while `hold` is set, a render waits for `release` (a render
    under a pass's load, 50-250 ms at 2,000 shares, made as long as the test needs)."""

    def __init__(self) -> None:
        self.value = 1.0
        self.hold = False
        self.rendering = threading.Event()
        self.release = threading.Event()

    def collect(self) -> list[Metric]:
        if self.hold:
            self.rendering.set()
            self.release.wait(30)
        family = GaugeMetricFamily("smbgw_test_value", "a value the test changes")
        family.add_metric([], self.value)
        return [family]


def test_a_scrape_does_not_wait_for_a_render_in_the_background() -> None:
    """The previous rendering is served, gzipped on request, while the next one is made.
    (A gzipped scrape used to wait for the whole background render to store its
    compressed copy: 200-300 ms scrapes at 2,000 shares during reloads.)"""
    from prometheus_client import CollectorRegistry

    from smbgw_agent.observe.metrics_http import ExpositionApp

    registry = CollectorRegistry()
    collector = _SlowCollector()
    registry.register(collector)  # type: ignore[arg-type]
    version = {"value": 1}
    app = ExpositionApp(registry, lambda: version["value"])
    _, plain, gzipped = app.body("", want_gzip=False)  # first seen without gzip: stored uncompressed
    assert not gzipped and b"smbgw_test_value 1.0" in plain
    collector.value, collector.hold, version["value"] = 2.0, True, 2
    answers: list[tuple[str, bytes, bool]] = []
    try:
        app.warm()
        assert collector.rendering.wait(10), "the background render never started"
        scrape = threading.Thread(target=lambda: answers.append(app.body("", want_gzip=True)))
        scrape.start()
        scrape.join(10)
        assert not scrape.is_alive(), "the scrape waited for the background render"
    finally:
        collector.release.set()
    _, body, gzipped = answers[0]
    assert gzipped and b"smbgw_test_value 1.0" in gzip.decompress(body)
    deadline = time.monotonic() + 10
    while b"smbgw_test_value 2.0" not in gzip.decompress(app.body("", want_gzip=True)[1]):
        assert time.monotonic() < deadline, "the new rendering never reached the scrape"
        time.sleep(0.01)
    assert app.renders == 2


def test_unreadable_tls_files_are_a_clear_error(tmp_path: Path) -> None:
    config = AgentConfig(
        node="n", metrics_listen=f"127.0.0.1:{free_port()}", metrics_tls_cert=str(tmp_path / "missing.pem"),
        metrics_tls_key=str(tmp_path / "missing.key"),
    )
    with pytest.raises(MetricsConfigError, match="TLS files"):
        make_exporter({}).start(config, Paths.under(None))


def test_scrapes_are_rendered_once_per_change_of_the_data() -> None:
    snapshot = dict(SNAPSHOT, updated=1.0)
    current = {"snapshot": snapshot}
    host = PluginHost({})
    exporter = Exporter(
        status=lambda: current["snapshot"], plugins=lambda: host,
        context=lambda status: CollectContext(Paths.under(None), AgentConfig(node="n"), Runner(), status),
    )
    exporter.start(AgentConfig(node="n", metrics_listen=f"127.0.0.1:{free_port()}"), Paths.under(None))
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    try:
        first = urllib.request.urlopen(url, timeout=10).read()
        assert urllib.request.urlopen(url, timeout=10).read() == first
        assert exporter.app.renders == 1
        current["snapshot"] = dict(SNAPSHOT, updated=2.0, passes=8)  # a new pass...
        exporter.observe_pass(0.1)  # ...which the daemon reports: re-rendered in the background
        deadline = time.monotonic() + 10
        while b"smbgw_reconcile_total 8.0" not in urllib.request.urlopen(url, timeout=10).read():
            assert time.monotonic() < deadline, "the new pass never reached the scrape"
            time.sleep(0.01)
        assert exporter.app.renders == 2
        gz = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(gz, timeout=10) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(response.read()).startswith(b"# HELP")
        assert exporter.app.renders == 2
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=10)
    finally:
        exporter.stop()
