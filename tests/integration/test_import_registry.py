"""`smbgwctl import` of shares that live in Samba's registry, not in a file.

Shares made with `net conf addshare` / `net conf setparm` are read by smbd when [global]
says `registry shares = yes` (or `include = registry`, which implies it). testparm shows
them, but no smb.conf line defines them. Real `net conf`, real testparm, real smbd and the
real agent:

- a plain import takes them (and the file shares beside them) as share files, and once
  the agent serves the files `testparm -s --section-name` shows the same effective values
  both ways (test_import.py's round trip);
- `--adopt` cannot remove a registry share (that is `net conf delshare`, not an edit of
  smb.conf), so it leaves each one where it is, says why, and exits 1, also when smb.conf
  has a section of the same name that the registry's definition replaces.

Every registry here is the test's own: each smb.conf sets `state directory` (where
registry.tdb lives) to a temporary directory *before* the line that makes Samba read the
registry (`include = registry` reads it where it stands), and the host's
/var/lib/samba/registry.tdb is checked to be left as it was. `config backend = registry`
is not tested: it makes Samba drop every global of the file, `state directory` with them,
and open the registry of the default state directory, the host's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.integration.test_import import import_serve_and_compare, section_of
from tests.support.procs import RestartableAgent, smbgwctl, write_agent_toml

pytestmark = pytest.mark.integration

HOST_REGISTRY = Path("/var/lib/samba/registry.tdb")


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


@pytest.fixture(autouse=True)
def host_registry_untouched() -> Iterator[None]:
    """No test here may create or write the host's registry."""
    if shutil.which("net") is None:  # a failure under CI (tests/conftest.py)
        pytest.skip("Samba's `net` is missing: apt-get install samba-common-bin")
    before = _stat(HOST_REGISTRY)
    yield
    assert _stat(HOST_REGISTRY) == before, f"{HOST_REGISTRY} was created or changed"


def net_conf(conf: Path, *args: str) -> str:
    done = subprocess.run(["net", "-s", str(conf), "conf", *args], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (args, done.stdout + done.stderr)
    return done.stdout


def private_global(folder: Path, reads_registry: str) -> str:
    """A [global] whose Samba directories are all below `folder`, the registry line last."""
    return f"""[global]
\tworkgroup = REGTEST
\tserver role = standalone server
\tprivate dir = {folder}/private
\tlock directory = {folder}/lock
\tstate directory = {folder}/state
\tcache directory = {folder}/cache
\tpid directory = {folder}/run
\tncalrpc dir = {folder}/run/ncalrpc
\tpassdb backend = tdbsam:{folder}/private/passdb.tdb
\tlog file = {folder}/log.%m
\tload printers = no
\tprintcap name = /dev/null
\t{reads_registry}
"""


@pytest.mark.parametrize("reads_registry", ["registry shares = yes", "include = registry"])
def test_registry_shares_import_and_serve_with_the_same_parameters(
    sandbox: Sandbox, tmp_path: Path, reads_registry: str
) -> None:
    for name in ("private", "lock", "state", "cache", "run/ncalrpc"):
        (tmp_path / name).mkdir(parents=True)
    source = tmp_path / "smb.conf"
    source.write_text(private_global(tmp_path, reads_registry)
                      + "\n[Local]\n\tpath = /srv/smb/local\n\tread only = no\n\tcomment = from the file\n")
    net_conf(source, "addshare", "RegDocs", "/srv/smb/regdocs", "writeable=y", "guest_ok=n", "Registry documents")
    for parameter, value in (("valid users", "alice, @staff"), ("create mask", "0660"),
                             ("directory mask", "0770"), ("veto files", "/*.tmp/Thumbs.db/"),
                             ("browseable", "no"), ("hide dot files", "no")):
        net_conf(source, "setparm", "RegDocs", parameter, value)
    net_conf(source, "addshare", "regarchive", "/srv/smb/regarchive", "writeable=n", "guest_ok=y")
    net_conf(source, "setparm", "regarchive", "force user", "root")
    net_conf(source, "setparm", "regarchive", "strict locking", "yes")
    if reads_registry.startswith("include"):  # the registry's [global] is read too
        net_conf(source, "setparm", "global", "map archive", "no")
    assert (tmp_path / "state/registry.tdb").is_file()  # the test's own registry
    # `listshares` names the registry's [global] too when it holds parameters: import must not take it.
    assert set(net_conf(source, "listshares").split()) - {"global"} == {"RegDocs", "regarchive"}

    report = import_serve_and_compare(sandbox, source)

    shares = {s["name"]: s for s in report["shares"]}
    assert sorted(shares) == ["Local", "RegDocs", "regarchive"], report
    for name in ("RegDocs", "regarchive"):
        assert f"of the registry of {source}" in shares[name]["text"], shares[name]
    assert f"of {source}\n" in shares["Local"]["text"]
    assert 'valid_users = ["alice", "@staff"]' in shares["RegDocs"]["text"]
    assert "browseable = false" in shares["RegDocs"]["text"] and not shares["RegDocs"]["left_out"]
    assert sorted(line.split(" = ")[0] for line in shares["regarchive"]["left_out"]) == ["force user", "guest ok"]
    assert sorted(p.name for p in sandbox.shares_dir.glob("*.toml")) == ["local.toml", "regarchive.toml",
                                                                         "regdocs.toml"]


@pytest.fixture
def registry_sandbox(sandbox: Sandbox) -> Sandbox:
    """The sandbox's smb.conf with `registry shares = yes` and, in its own registry, [RegDocs]
    (a share a share file could carry whole) and [Both], which smb.conf also defines (the
    registry's definition replaces the file's); [Projects] in the file only."""
    write_agent_toml(sandbox, "allow_custom_options = true")
    for name in ("projects", "regdocs", "both-file", "both-registry"):
        sandbox.share_dir(name)
    srv = sandbox.root / "srv/smb"
    with open(sandbox.smb_conf, "a") as conf:  # the sandbox's [global] sets its state directory above
        conf.write(f"\tregistry shares = yes\n"
                   f"\n[Projects]\n\tpath = {srv}/projects\n\tread only = no\n\tvalid users = {sandbox.user}\n"
                   f"\n[Both]\n\tpath = {srv}/both-file\n\tcomment = the file's\n\tread only = no\n")
    net_conf(sandbox.smb_conf, "addshare", "RegDocs", f"{srv}/regdocs", "writeable=y", "guest_ok=n", "in the registry")
    net_conf(sandbox.smb_conf, "setparm", "RegDocs", "valid users", sandbox.user)
    net_conf(sandbox.smb_conf, "addshare", "Both", f"{srv}/both-registry", "writeable=y", "guest_ok=n",
             "the registry's")
    assert (sandbox.root / "var/lib/samba/state/registry.tdb").is_file()
    subprocess.run(["smbcontrol", "-s", str(sandbox.smb_conf), "smbd", "reload-config"], check=True, timeout=30)
    for share in ("Projects", "RegDocs", "Both"):
        assert sandbox.smbclient(share, "ls").returncode == 0, share
    return sandbox


def test_adopt_leaves_registry_shares_in_the_registry_and_says_why(
    registry_sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = registry_sandbox
    restartable.start()
    before = {name: section_of(box.smb_conf, name) for name in ("RegDocs", "Both")}
    assert before["Both"]["comment"] == "the registry's", before

    done = smbgwctl(box.root, "import", "--adopt", "--json")

    report = json.loads(done.stdout)
    print(f"\n[adopt registry] rc={done.returncode} adopted={report['adopted']} kept={report['kept']}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert report["error"] is None and report["adopted"] == ["Projects"], report
    assert sorted(report["kept"]) == ["Both", "RegDocs"], report
    for why in report["kept"].values():
        assert "registry" in why and "net conf" in why, report
    # Neither is a share file, and smb.conf's [Both] is neither marked nor removed.
    assert sorted(p.name for p in box.shares_dir.glob("*.toml")) == ["projects.toml"]
    conf = box.smb_conf.read_text()
    assert "[Projects]" not in conf and "[Both]" in conf and "handed over" not in conf, conf
    assert sorted(net_conf(box.smb_conf, "listshares").split()) == ["Both", "RegDocs"]
    assert {name: section_of(box.smb_conf, name) for name in before} == before
    status = restartable.status() or {}
    assert status["shares"]["Projects"]["state"] == "served", status
    assert "RegDocs" not in status["shares"] and "Both" not in status["shares"], status
    for share in ("Projects", "RegDocs", "Both"):
        assert box.smbclient(share, "ls").returncode == 0, share

    text = smbgwctl(box.root, "import", "--adopt")  # the words an administrator reads
    assert text.returncode == 1, text.stdout + text.stderr
    assert "[RegDocs]: defined in Samba's registry (net conf)" in text.stderr, text.stderr
    assert not text.stdout.count("adopted ["), text.stdout


def test_import_asks_net_conf_only_when_the_registry_is_read(sandbox: Sandbox, tmp_path: Path) -> None:
    """Without `registry shares`, no registry is opened: `net conf` would create one."""
    for name in ("private", "lock", "state", "cache", "run/ncalrpc"):
        (tmp_path / name).mkdir(parents=True)
    source = tmp_path / "smb.conf"
    source.write_text(private_global(tmp_path, "registry shares = no") + "\n[plain]\n\tpath = /srv/smb/plain\n")
    done = smbgwctl(sandbox.root, "import", "--from", str(source), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [s["name"] for s in json.loads(done.stdout)["shares"]] == ["plain"]
    assert not (tmp_path / "state/registry.tdb").exists(), os.listdir(tmp_path / "state")


def test_a_share_file_may_not_take_the_name_of_a_registry_share(
    registry_sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    """Fail closed, as for a section written in smb.conf: smbd prefers a file's section to
    the registry's, so a share file named like a registry share would silently replace the
    administrator's share (its path, its valid users). The agent refuses the file, naming
    the registry; and a registry share added under a served share's name takes that share
    down at the next full pass (here a SIGHUP; otherwise within resync_interval)."""
    box = registry_sandbox
    box.share_dir("mine")
    box.share_dir("later")
    (box.shares_dir / "regdocs.toml").write_text('path = "/srv/smb/mine"\ncomment = "the agent\'s"\n')
    (box.shares_dir / "later.toml").write_text('path = "/srv/smb/later"\n')
    restartable.start()
    status = restartable.wait_status(lambda s: s["shares"].get("later", {}).get("state") == "served")
    problems = status["files"]["regdocs.toml"]["problems"]
    assert status["files"]["regdocs.toml"]["serving"] == "refused", status["files"]
    assert any("[RegDocs] in Samba's registry (net conf)" in p["message"] for p in problems), problems
    assert "regdocs" not in status["shares"] or status["shares"]["regdocs"]["state"] != "served", status["shares"]
    assert section_of(box.smb_conf, "RegDocs")["comment"] == "in the registry", "the registry's share is served"

    net_conf(box.smb_conf, "addshare", "Later", str(box.root / "srv/smb/regdocs"), "writeable=n", "guest_ok=n")
    assert restartable.proc is not None
    restartable.proc.send_signal(signal.SIGHUP)
    status = restartable.wait_status(lambda s: s["files"]["later.toml"]["serving"] == "refused")
    assert "later" not in status["shares"] or status["shares"]["later"]["state"] != "served", status["shares"]
    assert not (box.paths.samba_dir / "share-later.conf").exists(), "its fragment is gone"
    # smbgwctl validate judges the file as the agent does.
    done = smbgwctl(box.root, "validate", str(box.shares_dir / "regdocs.toml"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[RegDocs] in Samba's registry (net conf)" in done.stdout + done.stderr, done.stdout + done.stderr
