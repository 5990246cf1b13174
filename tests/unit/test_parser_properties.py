"""Property tests for every parser the agent owns: arbitrary bytes and arbitrary TOML
never raise anything but the parser's own error type.

Parsers: share files and agent.toml (bytes -> TOML -> model), file names in shares.d,
the admin's smb.conf, `smbstatus --json` and `testparm` output, the declaration line of
a generated fragment, status.json as `smbgwctl` reads it. A fixed number of examples runs
in `make test`; `make test-long` raises it (SMBGW_PROPERTY_EXAMPLES).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smbgw_agent.cli import read_status_file, status_problems
from smbgw_agent.effects import samba
from smbgw_agent.model.config import AgentConfig, config_from_document
from smbgw_agent.model.errors import ConfigError
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import parse_share
from smbgw_agent.model.smbconf import read_admin_shares
from smbgw_agent.model.tomlsource import InputFileError, parse_toml
from smbgw_agent.observe.smbstatus import SmbstatusError, parse_smbstatus
from smbgw_agent.platform.pluginhost import PluginHost, load_target
from smbgw_agent.reconcile.scanner import ShareScanner
from tests.support.generate import DOCUMENTS, VALUES

EXAMPLES = int(os.environ.get("SMBGW_PROPERTY_EXAMPLES", "150"))
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, derandomize="SMBGW_PROPERTY_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], database=None,
)
NATIVE = "smbgw_plugins.mode_native:NativeModePlugin"
_native = load_target(NATIVE)
live_spec = sys.modules[type(_native).__module__].live_spec
PLUGINS = PluginHost({"mode_native": _native})



@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "srv/smb").mkdir(parents=True)
    (tmp_path / "etc/smbgw/shares.d").mkdir(parents=True)
    return tmp_path


def _share(root: Path, raw: bytes) -> None:
    path = root / "etc/smbgw/shares.d/x.toml"
    try:
        doc = parse_toml(path, raw)
    except InputFileError:
        return
    config = AgentConfig(node="n", allowed_roots=("/srv",), allow_custom_options=True)
    try:
        spec = parse_share(doc, config, Paths.under(root), PLUGINS)
    except ConfigError as exc:
        assert exc.problems and all(p.file == path for p in exc.problems)
        return
    json.dumps(spec.to_dict())  # what is accepted can be stored


@PROPERTY
@given(raw=st.binary(max_size=400))
def test_share_files_of_arbitrary_bytes(root: Path, raw: bytes) -> None:
    _share(root, raw)


@PROPERTY
@given(text=DOCUMENTS)
def test_share_files_of_arbitrary_toml(root: Path, text: str) -> None:
    _share(root, text.encode("utf-8", errors="surrogatepass"))


@PROPERTY
@given(text=DOCUMENTS)
def test_agent_toml_of_arbitrary_toml(tmp_path: Path, text: str) -> None:
    try:
        doc = parse_toml(tmp_path / "agent.toml", text.encode("utf-8", errors="surrogatepass"))
    except InputFileError:
        return
    try:
        config_from_document(doc, PLUGINS)
    except ConfigError as exc:
        assert exc.problems


@PROPERTY
@given(names=st.lists(st.binary(min_size=1, max_size=40), max_size=6))
def test_file_names_of_arbitrary_bytes(root: Path, names: list[bytes]) -> None:
    directory = os.fsencode(root / "etc/smbgw/shares.d")
    for entry in os.listdir(directory):
        os.unlink(os.path.join(directory, entry))
    for raw in names:
        name = raw.replace(b"/", b"_").replace(b"\0", b"_")
        if name in (b".", b".."):
            continue
        with open(os.path.join(directory, name + b".toml"), "wb") as handle:
            handle.write(b'path = "/srv/smb/x"\n')
    scanner = ShareScanner(Paths.under(root), PLUGINS, AgentConfig(node="n", allowed_roots=("/srv",)))
    scan = scanner.scan()
    for file, result in scan.files.items():
        file.encode("utf-8")  # every name the agent keeps is valid text (status, state, metrics)
        for problem in result.problems:
            str(problem).encode("utf-8")
    json.dumps({f: [p.to_dict() for p in r.problems] for f, r in scan.files.items()}, ensure_ascii=False)


@PROPERTY
@given(raw=st.binary(max_size=2000) | DOCUMENTS.map(str.encode))
def test_admin_smb_conf_of_arbitrary_bytes(tmp_path: Path, raw: bytes) -> None:
    conf = tmp_path / "smb.conf"
    conf.write_bytes(raw)
    found = read_admin_shares(conf, tmp_path / "managed")
    assert all(key == section.name.casefold() for key, section in found.sections.items())


@PROPERTY
@given(text=st.text(max_size=500) | st.builds(json.dumps, VALUES))
def test_smbstatus_output(text: str) -> None:
    with contextlib.suppress(SmbstatusError):
        parse_smbstatus(text)


@PROPERTY
@given(code=st.integers(min_value=-255, max_value=255), stderr=st.text(max_size=500))
def test_testparm_output(code: int, stderr: str) -> None:
    errors = samba.testparm_errors(code, stderr)
    assert isinstance(errors, tuple) and (code == 0 or errors)


@PROPERTY
@given(text=st.text(max_size=500), tail=st.builds(json.dumps, VALUES))
def test_fragment_declaration_lines(text: str, tail: str) -> None:
    for candidate in (text, f"# smbgw-spec: {tail}\n{text}", f"# x\n# smbgw-spec: {text}"):
        spec = live_spec(candidate)
        assert spec is None or spec.name


@PROPERTY
@given(raw=st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), VALUES))
def test_status_files_as_smbgwctl_reads_them(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(raw)
    try:
        status = read_status_file(path)
    except (ValueError, OSError):
        return
    status_problems(status)
