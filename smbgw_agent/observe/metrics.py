"""The Prometheus exporter: a private registry, collectors that build fresh families at
scrape time, and a plugin hook for plugin-owned families.

Scrapes read an immutable snapshot the reconciler publishes after each pass (so a
scrape never races a pass) and the cached values of background readings (so a scrape
never waits on a slow command). A reading that fails shows as
`smbgw_collector_success{collector=...} 0`, never as a zero value.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from smbgw_agent import __version__
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.observe.background import BackgroundReading
from smbgw_agent.observe.metrics_http import ExpositionApp, MetricsServer, tls_context
from smbgw_agent.observe.usage import usage_by_share
from smbgw_agent.platform.context import CollectContext
from smbgw_agent.platform.pluginhost import PluginHost

log = logging.getLogger(__name__)
DEGRADED_REASONS = ("state", "status")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class MetricsConfigError(Exception):
    """The [metrics] settings cannot be honoured (e.g. TLS on an old prometheus-client)."""


def merge_families(families: Iterable[Metric]) -> list[Metric]:
    """Join families of the same name (e.g. `smbgw_collector_success` from core and plugins)."""
    merged: dict[str, Metric] = {}
    for family in families:
        existing = merged.get(family.name)
        if existing is None:
            merged[family.name] = family
        elif existing.type == family.type:
            # A later source's series replaces an earlier one with the same labels: the
            # core's own families come first, so a plugin's better figure wins (the quota
            # backend's usage over the core's directory walk).
            replaced = {(s.name, tuple(sorted(s.labels.items()))) for s in family.samples}
            existing.samples[:] = [
                s for s in existing.samples if (s.name, tuple(sorted(s.labels.items()))) not in replaced
            ]
            existing.samples.extend(family.samples)
        else:
            log.error("metric %s has two types (%s, %s); dropping one", family.name, existing.type, family.type)
    return list(merged.values())


class AgentCollector:
    """Core families plus everything plugins contribute through `smbgw_collect`."""

    def __init__(
        self,
        status: Callable[[], Mapping[str, Any] | None],
        plugins: Callable[[], PluginHost],
        context: Callable[[Mapping[str, Any]], CollectContext],
        usage: BackgroundReading[tuple[dict[str, int], list[str]]] | None,
    ) -> None:
        self._status = status
        self._plugins = plugins
        self._context = context
        self._usage = usage

    def describe(self) -> list[Metric]:
        return []  # families are dynamic; do not collect at registration time

    def collect(self) -> Iterator[Metric]:
        families: list[Metric] = []
        success = GaugeMetricFamily(
            "smbgw_collector_success", "1 if the collector's last reading succeeded, else 0",
            labels=["collector"],
        )
        status = self._status()
        try:
            families.extend(self._core(status))
            success.add_metric(["core"], 1)
        except Exception as exc:  # a broken snapshot must not break the whole scrape
            log.error("core collector failed: %s", exc)
            success.add_metric(["core"], 0)
        if self._usage is not None:
            families.extend(self._usage_families(status))
            success.add_metric(["usage"], 1 if self._usage.ok else 0)
        if status is not None:
            ctx = self._context(status)
            for plugin, result, error in self._plugins().call_each("smbgw_collect", ctx=ctx):
                if error is not None:
                    log.error("collector of plugin %s failed: %s", plugin, error)
                    success.add_metric([plugin], 0)
                    continue
                families.extend(result or [])
                success.add_metric([plugin], 1)
        # First, so that a plugin's own verdict on its reading (the quota backend failed)
        # replaces the core's "its collect hook answered".
        yield from merge_families([success, *families])

    @staticmethod
    def _core(status: Mapping[str, Any] | None) -> list[Metric]:
        info = InfoMetricFamily("smbgw_agent", "smbgw-agent build and node", labels=["version", "node"])
        if status is None:
            info.add_metric([__version__, ""], {})
            return [info]
        info.add_metric([str(status.get("version", __version__)), str(status.get("node", ""))], {})
        passes = CounterMetricFamily("smbgw_reconcile", "Reconcile passes run")
        passes.add_metric([], float(status.get("passes", 0)))
        errors = CounterMetricFamily("smbgw_reconcile_errors", "Reconcile passes that did not fully succeed")
        errors.add_metric([], float(status.get("pass_errors", 0)))
        last = GaugeMetricFamily(
            "smbgw_last_reconcile_success_timestamp_seconds",
            "Unix time of the last pass that fully succeeded (0: none since start)",
        )
        last.add_metric([], float(status.get("last_success") or 0))
        config_ok = GaugeMetricFamily(
            "smbgw_agent_config_valid", "1 if agent.toml was valid when last (re)loaded"
        )
        config_ok.add_metric([], 0.0 if status.get("config", {}).get("problems") else 1.0)
        valid = GaugeMetricFamily("smbgw_share_file_valid", "1 if the share file is valid", labels=["file"])
        for file, info_ in sorted(status.get("files", {}).items()):
            valid.add_metric([file], 1.0 if info_.get("valid") else 0.0)
        share_info = GaugeMetricFamily(
            "smbgw_share_info", "Declared shares of this node (value always 1)", labels=["share", "mode", "path"]
        )
        up = GaugeMetricFamily("smbgw_share_up", "1 if the share is served as declared", labels=["share"])
        state = GaugeMetricFamily(
            "smbgw_share_state", "1 for the share's current state (served, pending, failed, refused, "
            "storage-missing, removing)", labels=["share", "state"],
        )
        for name, share in sorted(status.get("shares", {}).items()):
            share_info.add_metric([name, str(share.get("mode")), str(share.get("path"))], 1.0)
            up.add_metric([name], 1.0 if share.get("state") == "served" else 0.0)
            state.add_metric([name, str(share.get("state"))], 1.0)
        degraded = GaugeMetricFamily(
            "smbgw_agent_degraded", "1 while the agent cannot do part of its job (state: the state "
            "database cannot be written; status: status.json cannot be written)", labels=["reason"],
        )
        current = status.get("degraded") or {}
        for reason in DEGRADED_REASONS:
            degraded.add_metric([reason], 1.0 if reason in current else 0.0)
        writable = GaugeMetricFamily(
            "smbgw_cluster_fs_writable", "1 if the file system of the shares directory takes changes (0: read-only, "
            "such as /etc/pve while the cluster has no quorum)",
        )
        shares_fs = status.get("shares_fs") or {}
        writable.add_metric([], 0.0 if shares_fs.get("writable") is False else 1.0)
        families = [info, passes, errors, last, config_ok, valid, share_info, up, state, degraded, writable]
        return families + AgentCollector._platform(status)

    @staticmethod
    def _platform(status: Mapping[str, Any]) -> list[Metric]:
        """Node resources, health findings and jobs, whichever plugin they belong to."""
        resource_up = GaugeMetricFamily(
            "smbgw_resource_up", "1 if the node resource is applied as declared", labels=["resource", "plugin"]
        )
        for resource_id, info_ in sorted(status.get("resources", {}).items()):
            applied = 1.0 if info_.get("state") == "applied" else 0.0
            resource_up.add_metric([resource_id, str(info_.get("plugin"))], applied)
        health = GaugeMetricFamily(
            "smbgw_health_ok", "1 if the plugin's health check passed", labels=["plugin", "resource", "check"]
        )
        seen: set[tuple[str, str, str]] = set()
        for finding in status.get("health", []):
            labels = (str(finding.get("plugin")), str(finding.get("resource")), str(finding.get("check")))
            if labels not in seen:
                seen.add(labels)
                health.add_metric(list(labels), 1.0 if finding.get("ok") else 0.0)
        job_ok = GaugeMetricFamily(
            "smbgw_job_last_success", "1 if the job's last run succeeded (0: failed or timed out)",
            labels=["job", "plugin"],
        )
        for job_id, job in sorted(status.get("jobs", {}).items()):
            if job.get("state") in ("succeeded", "failed", "timed-out"):
                job_ok.add_metric([job_id, str(job.get("plugin"))], 1.0 if job.get("state") == "succeeded" else 0.0)
        return [resource_up, health, job_ok]

    def _usage_families(self, status: Mapping[str, Any] | None) -> list[Metric]:
        used = GaugeMetricFamily(
            "smbgw_share_used_bytes", "Bytes allocated below the share path (background walk)", labels=["share"]
        )
        value = self._usage.value if self._usage else None
        if value is not None and status is not None:
            current = set(status.get("shares", {}))
            for share, size in sorted(value[0].items()):
                if share in current:
                    used.add_metric([share], float(size))
        return [used]


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Exporter:
    def __init__(
        self,
        status: Callable[[], Mapping[str, Any] | None],
        plugins: Callable[[], PluginHost],
        context: Callable[[Mapping[str, Any]], CollectContext],
        share_paths: Callable[[], Mapping[str, Path]] | None = None,
        usage_interval: float = 300.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.duration = Histogram(
            "smbgw_reconcile_duration_seconds", "Duration of reconcile passes",
            buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.usage: BackgroundReading[tuple[dict[str, int], list[str]]] | None = None
        if share_paths is not None:
            def read_usage() -> tuple[dict[str, int], list[str]]:
                result, failures = usage_by_share(share_paths())
                if failures:
                    raise RuntimeError("; ".join(failures[:3]))
                return result, failures

            self.usage = BackgroundReading("usage", read_usage, usage_interval)
        self.collector = AgentCollector(status, plugins, context, self.usage)
        self.registry.register(self.collector)
        self._status = status
        self._observed = 0
        self.app = ExpositionApp(self.registry, self.version)
        self.started = False
        self._server: MetricsServer | None = None

    @property
    def port(self) -> int | None:
        return self._server.port if self._server else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.app.warm in BackgroundReading.listeners:
            BackgroundReading.listeners.remove(self.app.warm)
        if self.usage is not None:
            self.usage.stop()

    def observe_pass(self, seconds: float) -> None:
        self.duration.observe(seconds)
        self._observed += 1
        if self.started:
            self.app.warm()

    def version(self) -> tuple[object, int, int]:
        """Changes whenever what a scrape would show changes: a new pass snapshot (its
        time stamp), a pass observed by the histogram, or any background reading refreshed."""
        snapshot = self._status()
        return (snapshot.get("updated") if snapshot else None, self._observed, BackgroundReading.generation)

    def start(self, config: AgentConfig, paths: Paths) -> None:
        """Listen on [metrics] listen, over TLS when tls_cert and tls_key are set."""
        host, port = split_listen(config.metrics_listen)
        context = None
        if config.metrics_tls_cert and config.metrics_tls_key:
            client_ca = config.metrics_tls_client_ca
            try:
                context = tls_context(
                    str(paths.host(config.metrics_tls_cert)), str(paths.host(config.metrics_tls_key)),
                    str(paths.host(client_ca)) if client_ca else None,
                )
            except (OSError, ssl.SSLError) as exc:
                raise MetricsConfigError(f"cannot load the [metrics] TLS files: {exc}") from exc
        self._server = MetricsServer(self.app, host, port, context)
        self._server.start()
        BackgroundReading.listeners.append(self.app.warm)
        if self.usage is not None:
            self.usage.start()
        self.started = True
        log.info("metrics on %s://%s/metrics", "https" if context else "http", config.metrics_listen)

    def render(self) -> bytes:
        return generate_latest(self.registry)
