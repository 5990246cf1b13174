"""Generated bad input against the real agent's pass: share files and agent.toml.

A node serves three good shares through the real reconciler, the real native mode, real
testparm and a real smbd. Next to them, hypothesis writes one more share file per
example -- a few byte edits of a good file, a good file with hostile values, or
arbitrary TOML -- and a pass runs. For every example:

- no exception escapes and the pass reports no internal error;
- the file is either valid, or every problem names the file, and a problem about a key
  the file contains names its line (a problem about the whole file -- not UTF-8, NUL
  bytes -- has no line to name);
- the three good shares keep byte-identical configuration and stay served as declared;
- a generated share that is served has a fragment with exactly its own section (no
  value smuggled in a second one).

agent.toml gets the same treatment through the loader the daemon uses (plugins, then
the configuration they validate): a valid result or problems that name file and line.

CI runs 1,000 share files and 1,000 agent.toml files (fixed seed); `make test-long` runs
10,000 of each with a random seed (SMBGW_GENERATED_EXAMPLES).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devtools.sandbox import Sandbox, free_port
from smbgw_agent.assembly import load_plugins_and_config
from smbgw_agent.effects.fileio import atomic_write
from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.services import ServiceControl
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import ConfigError, Problem
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.tomlsource import InputFileError, parse_toml
from smbgw_agent.platform.pluginhost import PluginHost
from smbgw_agent.reconcile.reconciler import Reconciler
from tests.support.generate import DOCUMENTS, GOOD_SHARE, SHARE_FILES, toml_key, toml_value

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("SMBGW_GENERATED_EXAMPLES", "1000"))
LONG = "SMBGW_GENERATED_EXAMPLES" in os.environ
GENERATED = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
GOOD = ("plain", "docs", "team")
NATIVE = "smbgw_plugins.mode_native:NativeModePlugin"


def check_problems(path: Path, problems: list[Problem], raw: bytes) -> None:
    """Every problem names the file; one about a key the file has names its line too."""
    assert problems, f"{path.name} refused without saying why"
    try:
        data = parse_toml(path, raw).data
    except InputFileError:
        data = {}
    for problem in problems:
        assert problem.file == path, f"a problem of {path.name} names {problem.file}: {problem}"
        if problem.message.startswith("TOML syntax error"):
            assert problem.line is not None, f"a syntax error without its line: {problem}"
        # `options.x` is about the table `options`: when the file has it, it has a line.
        if problem.key and problem.key.split(".", 1)[0] in data:
            assert problem.line is not None, f"a problem about a key without its line: {problem}\n{raw[:300]!r}"


@dataclass
class Node:
    box: Sandbox
    reconciler: Reconciler
    fragments: dict[str, bytes]  # the good shares' fragments, as first served

    def fragment(self, name: str) -> Path:
        return self.box.paths.samba_dir / f"share-{name}.conf"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tools = ("smbd", "testparm", "smbcontrol", "smbpasswd")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"the native mode needs root and Samba's tools (missing: {missing})")
    box = Sandbox(tmp_path_factory.mktemp("generated") / "root", free_port())
    box.prepare()
    for name in (*GOOD, "gen"):
        box.share_dir(name)
    (box.root / "srv/smb/escape").symlink_to("/etc")  # a path that leaves the allowed roots
    for name in GOOD:
        (box.shares_dir / f"{name}.toml").write_text(GOOD_SHARE.format(name=name))
    box.start_smbd()
    try:
        runner = Runner()
        config = AgentConfig(node="sandbox", allowed_roots=("/srv",), allow_custom_options=True)
        reconciler = Reconciler(box.paths, config, PluginHost({"mode_native": NATIVE}),
                                ServiceControl(runner, use_systemd=False), runner)
        report = reconciler.run_pass()
        assert report.ok, report.errors
        fragments = {name: (box.paths.samba_dir / f"share-{name}.conf").read_bytes() for name in GOOD}
        yield Node(box, reconciler, fragments)
    finally:
        box.stop_smbd()


@GENERATED
@given(raw=SHARE_FILES)
def test_a_generated_share_file_never_disturbs_the_good_ones(node: Node, raw: bytes) -> None:
    path = node.box.shares_dir / "gen.toml"
    atomic_write(path, raw)
    report = node.reconciler.run_pass()
    assert not [e for e in report.errors if "internal error" in e], report.errors
    assert node.reconciler.internal_errors == 0
    assert report.desired is not None
    status = report.desired.files["gen.toml"]
    if not status.valid:
        check_problems(path, status.problems, raw)
    event("refused as a security problem" if status.unsafe else "invalid" if not status.valid
          else "failed" if "gen" in report.failed else "valid")
    for name in GOOD:
        good = report.desired.files[f"{name}.toml"]
        assert good.serving in ("current", "applied"), f"{name}: {good.to_dict()} after {raw[:300]!r}"
        assert node.fragment(name).read_bytes() == node.fragments[name], f"{name} changed after {raw[:300]!r}"
    if status.valid and status.share and "gen" not in report.failed:
        fragment = node.fragment(status.share.casefold())
        if fragment.exists():
            headers = [line for line in fragment.read_text().splitlines() if line.startswith("[")]
            assert len(headers) == 1, f"{fragment.name} has sections {headers} after {raw[:300]!r}"


# ---- agent.toml ----------------------------------------------------------------------------------

GOOD_AGENT_TOML: dict[str, dict[str, object]] = {
    "agent": {"node": "pve1", "allowed_roots": ["/srv", "/tank"], "resync_interval": "60s",
              "pass_timeout": "120s", "watch": "auto", "disabled_plugins": []},
    "samba": {"security_profile": "standard", "workgroup": "WORKGROUP"},
    "metrics": {"listen": "127.0.0.1:9945"},
    "quota": {"btrfs_enable_quotas": False, "project_id_range": [100000, 199999], "refresh_interval": "60s"},
    "backup": {"max_parallel": 1, "retry_initial": "1m", "retry_max": "30m"},
    "vip": {"probe_window": "600ms", "probes": 3, "health_interval": "2s"},
    "proxmox": {"vmid_range": [9000, 9099], "bridge": "vmbr0", "storage": "local-lvm"},
}
HOSTILE_AGENT_VALUES = [
    "", "/", "..", "/etc/../", "x" * 100_000, -1, 0, 2**63 - 1, 1e308, True, [], {}, ["/"], "0s", "-5s",
    "999999999h", "a\nb", "\x1b[2J", "127.0.0.1:0", "[::1]:99999", "0.0.0.0:9945", ["x"] * 5000,
]


def agent_toml_text(tables: dict[str, dict[str, object]]) -> str:
    return "".join(
        f"[{toml_key(table)}]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in values.items())
        for table, values in tables.items()
    )


@st.composite
def hostile_agent_toml(draw: st.DrawFn) -> str:
    tables = {table: dict(values) for table, values in GOOD_AGENT_TOML.items()}
    for _ in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from(sorted(tables)))
        key = draw(st.sampled_from(sorted(tables[table])) | st.text(min_size=1, max_size=12))
        tables[table][key] = draw(st.sampled_from(HOSTILE_AGENT_VALUES))
    return agent_toml_text(tables)


@st.composite
def mutated_agent_toml(draw: st.DrawFn) -> str:
    text = agent_toml_text(GOOD_AGENT_TOML)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from(['"', "[", "]", "=", "\n", "\\", "x", "", "{", "'''"])) + \
            text[at + draw(st.integers(0, 6)):]
    return text


AGENT_FILES = st.one_of(mutated_agent_toml(), hostile_agent_toml(), DOCUMENTS).map(
    lambda text: text.encode("utf-8", errors="surrogatepass"))


@pytest.fixture(scope="module")
def etc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("agent-toml")
    (root / "etc/smbgw").mkdir(parents=True)
    return root


@GENERATED
@given(raw=AGENT_FILES)
def test_a_generated_agent_toml_is_loaded_or_refused_with_file_and_line(etc: Path, raw: bytes) -> None:
    paths = Paths.under(etc)
    atomic_write(paths.agent_config, raw)
    try:
        _, config = load_plugins_and_config(paths)
    except ConfigError as exc:
        check_problems(paths.agent_config, list(exc.problems), raw)
        event("refused")
    else:
        assert config.node and all(root.startswith("/") and root != "/" for root in config.allowed_roots)
        event("loaded")
