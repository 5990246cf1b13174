"""smbgwctl as an administrator uses it: validate, plan, status, show, and hostile arguments."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import served, write_share
from tests.support.procs import (
    RestartableAgent,
    describe_difference,
    run_agent_once,
    smbgwctl,
    snapshot_tree,
    wait_served,
)

pytestmark = pytest.mark.integration

AGENT_TOML = '[agent]\nnode = "n1"\nallowed_roots = ["/srv"]\n'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root for commands that need no smbd: agent.toml, an empty shares.d, a data dir."""
    root = tmp_path / "root"
    (root / "etc/smbgw/shares.d").mkdir(parents=True)
    (root / "etc/smbgw/agent.toml").write_text(AGENT_TOML)
    (root / "srv/data").mkdir(parents=True)
    return root


@pytest.fixture
def agent(sandbox: Sandbox) -> Iterator[RestartableAgent]:
    process = RestartableAgent(sandbox)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- validate --------------------------------------------------------------------------------


def test_validate_good_files_exit_0(root: Path, tmp_path: Path) -> None:
    one = write(tmp_path / "incoming/finance.toml", 'path = "/srv/data"\ncomment = "Finance"\n')
    two = write(tmp_path / "incoming/other.toml", 'name = "Team Docs"\npath = "/srv/docs"\nread_only = true\n')
    result = smbgwctl(root, "validate", str(one), str(two))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{one}: ok: share [finance] -> /srv/data (native)" in result.stdout
    assert f"{two}: ok: share [Team Docs] -> /srv/docs (native)" in result.stdout


def test_validate_bad_file_exit_1_with_file_line_messages(root: Path, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", 'path = "relative/dir"\nread_only = "yes"\ncolour = "blue"\n')
    good = write(tmp_path / "good.toml", 'path = "/srv/data"\n')
    result = smbgwctl(root, "validate", str(good), str(bad))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{good}: ok: share [good] -> /srv/data (native)" in lines
    assert any(line.startswith(f"{bad}:1: path: ") for line in lines), lines
    assert any(line.startswith(f"{bad}:2: read_only: ") for line in lines), lines
    assert any(line.startswith(f"{bad}:3: colour: ") and "unknown key" in line for line in lines), lines
    syntax = write(tmp_path / "syntax.toml", 'path = "/srv/data"\ncomment = "unterminated\n')
    result = smbgwctl(root, "validate", str(syntax))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{syntax}:2: ")


def test_validate_json(root: Path, tmp_path: Path) -> None:
    good = write(tmp_path / "good.toml", 'path = "/srv/data"\n')
    bad = write(tmp_path / "bad.toml", 'path = "/etc/shadow-dir"\n')
    result = smbgwctl(root, "validate", "--json", str(good), str(bad))
    assert result.returncode == 1
    [first, second] = json.loads(result.stdout)
    assert first["file"] == str(good) and first["valid"] is True and first["problems"] == []
    assert first["share"]["name"] == "good" and first["share"]["path"] == "/srv/data"
    assert second["file"] == str(bad) and second["valid"] is False and second["share"] is None
    [problem] = second["problems"]
    assert problem["key"] == "path" and problem["line"] == 1 and problem["file"] == str(bad)
    assert "/etc" in problem["message"]
    result = smbgwctl(root, "validate", str(good), "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)[0]["valid"] is True


def test_validate_reports_a_name_already_declared_in_shares_d(root: Path, tmp_path: Path) -> None:
    live = write(root / "etc/smbgw/shares.d/finance.toml", 'path = "/srv/data"\n')
    copy = write(tmp_path / "finance.toml", 'path = "/srv/data"\ncomment = "copy"\n')
    result = smbgwctl(root, "validate", str(copy))
    assert result.returncode == 1
    assert "also declared in" in result.stdout and str(live) in result.stdout
    # The file in shares.d does not conflict with itself.
    assert smbgwctl(root, "validate", str(live)).returncode == 0


# ---- hostile arguments ------------------------------------------------------------------------


def test_validate_nonexistent_file_and_directory(root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = smbgwctl(root, "validate", str(missing))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{missing}: ") and "does not exist" in result.stdout
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    result = smbgwctl(root, "validate", str(folder), "--json")
    assert result.returncode == 1
    [item] = json.loads(result.stdout)
    assert "is a directory" in item["problems"][0]["message"]


def test_validate_special_files_do_not_hang_or_crash(root: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    link = tmp_path / "link.toml"
    link.symlink_to(write(tmp_path / "target.toml", 'path = "/srv/data"\n'))
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"# " + b"x" * (4 << 20) + b"\n")
    binary = write(tmp_path / "binary.toml", "")
    binary.write_bytes(b'path = "/srv/data"\x00\xff\xfe\n')
    weird = write(tmp_path / "we\nird.toml", 'path = "/srv/data"\n')
    args = [str(p) for p in (fifo, link, huge, binary, weird, Path("/dev/zero"))]
    result = smbgwctl(root, "validate", "--json", *args, timeout=30)
    assert result.returncode == 1, result.stderr
    items = json.loads(result.stdout)
    assert [i["valid"] for i in items] == [False] * 6
    messages = [" ".join(p["message"] for p in i["problems"]) for i in items]
    assert "regular file" in messages[0]
    assert "symbolic link" in messages[1]
    assert "too large" in messages[2]
    assert "NUL" in messages[3] or "UTF-8" in messages[3]
    assert "control characters" in messages[4]
    assert "regular file" in messages[5]


def test_validate_a_thousand_files(root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    files = []
    for i in range(1000):
        files.append(write(folder / f"share{i:04d}.toml", f'path = "/srv/s{i}"\n'))
    write(folder / "share0500.toml", 'path = "/srv/s500"\nbogus = 1\n')
    started = time.monotonic()
    result = smbgwctl(root, "validate", "--json", *map(str, files), timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    items = json.loads(result.stdout)
    assert len(items) == 1000
    assert [i["file"] for i in items if not i["valid"]] == [str(folder / "share0500.toml")]
    assert elapsed < 60, f"validating 1000 files took {elapsed:.1f}s"


def test_validate_everything_in_a_large_shares_d_is_fast(root: Path) -> None:
    shares_d = root / "etc/smbgw/shares.d"
    for i in range(600):
        write(shares_d / f"s{i:04d}.toml", f'path = "/srv/s{i}"\n')
    files = sorted(str(p) for p in shares_d.glob("*.toml"))
    # Linear work takes ~2 s here; the quadratic comparison takes over 20 s.
    try:
        result = smbgwctl(root, "validate", *files, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("`smbgwctl validate` of 600 files in shares.d did not finish within 15 s")
    assert result.returncode == 0


@pytest.mark.parametrize(
    "args",
    [["frobnicate"], [], ["validate"], ["show"], ["status", "--bogus-flag"], ["--root"]],
    ids=["unknown-subcommand", "no-subcommand", "validate-no-files", "show-no-share", "unknown-flag", "root-no-value"],
)
def test_usage_errors_exit_2(root: Path, args: list[str]) -> None:
    result = smbgwctl(None, *args) if args[:1] == ["--root"] else smbgwctl(root, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage:" in result.stderr


def test_read_commands_without_an_agent(tmp_path: Path) -> None:
    nowhere = tmp_path / "never-ran"
    for args in (["status"], ["status", "--json"], ["show", "x"], ["show", "x", "--json"]):
        result = smbgwctl(nowhere, *args)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert "is smbgw-agent running" in result.stderr


# ---- plan ------------------------------------------------------------------------------------------


def state_digest(box: Sandbox) -> dict[str, str]:
    folder = box.root / "var/lib/smbgw"
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.iterdir()
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def test_plan_shows_adds_updates_removals_and_has_no_effects(sandbox: Sandbox) -> None:
    agent = RestartableAgent(sandbox)
    try:
        for name in ("keep", "edit", "gone"):
            sandbox.share_dir(name)
            write_share(sandbox, f"{name}.toml", f'path = "/srv/smb/{name}"\ncomment = "v1"\n')
        agent.start()
        names = ("keep", "edit", "gone")
        agent.wait_status(lambda s: all(s["shares"].get(n, {}).get("state") == "served" for n in names))
        assert agent.stop(signal.SIGTERM) == 0
        # Changes made while the agent is down: exactly what `plan` must show.
        write_share(sandbox, "edit.toml", 'path = "/srv/smb/edit"\ncomment = "v2"\n')
        write_share(sandbox, "new.toml", 'path = "/srv/smb/new"\n')
        (sandbox.shares_dir / "gone.toml").unlink()
        samba_owned = [sandbox.root / p for p in ("var/lib/samba", "var/log/samba", "run/samba", "var/lib/smbgw")]
        before = snapshot_tree(sandbox.root, exclude=[*samba_owned, agent.log])
        state_before = state_digest(sandbox)

        result = smbgwctl(sandbox.root, "plan")
        assert result.returncode == 0, result.stdout + result.stderr
        text = result.stdout
        assert "share:keep" not in text
        assert "share:new" in text and "add [new]" in text and "create directory /srv/smb/new" in text
        assert "share:edit" in text and "update [edit]" in text
        assert "share:gone" in text and "stop serving [gone]" in text
        result = smbgwctl(sandbox.root, "plan", "--json")
        assert result.returncode == 0
        plan = json.loads(result.stdout)
        # Typed changes: which plugin, on which resource, what it does.
        changes = {(c["resource"], c["action"], c["plugin"]) for c in plan["changes"]}
        assert changes == {
            ("share:new", "create", "mode_native"), ("share:edit", "update", "mode_native"),
            ("share:gone", "delete", "mode_native"),
        }, plan["changes"]
        assert all(set(c) == {"plugin", "resource", "action", "detail"} for c in plan["changes"])
        assert plan["errors"] == {} and plan["invalid_files"] == {} and plan["pass_errors"] == []

        after = snapshot_tree(sandbox.root, exclude=[*samba_owned, agent.log])
        assert before == after, describe_difference(before, after)
        assert state_digest(sandbox) == state_before
        assert served(sandbox, "gone") and not served(sandbox, "new")

        # One pass of the agent then does what the plan said, and nothing else.
        once = run_agent_once(sandbox.root, "--once")
        assert once.returncode == 0, once.stderr[-2000:]
        status = json.loads(sandbox.paths.status_file.read_text())
        assert status["pass"]["changed"] == sorted(c["resource"].removeprefix("share:") for c in plan["changes"]
                                                   if c["detail"].startswith(("add", "update", "stop")))
        wait_served(sandbox, "new")
        assert not served(sandbox, "gone")
        result = smbgwctl(sandbox.root, "plan")
        assert (result.returncode, result.stdout.strip()) == (0, "nothing to change")
    finally:
        agent.stop()


def test_plan_reports_invalid_files_with_exit_1(root: Path) -> None:
    write(root / "etc/smbgw/shares.d/ok.toml", 'path = "/srv/data"\n')
    broken = write(root / "etc/smbgw/shares.d/broken.toml", 'path = "/srv/data"\nmode = "teleport"\n')
    result = smbgwctl(root, "plan")
    assert result.returncode == 1
    assert "add [ok]" in result.stdout
    assert f"invalid: {broken}:2: mode: " in result.stdout


def test_plan_on_a_node_where_the_agent_never_ran_creates_nothing(root: Path) -> None:
    write(root / "etc/smbgw/shares.d/ok.toml", 'path = "/srv/data"\n')
    before = snapshot_tree(root)
    result = smbgwctl(root, "plan")
    assert result.returncode == 0, result.stdout + result.stderr
    after = snapshot_tree(root)
    assert before == after, describe_difference(before, after)


# ---- status and show ---------------------------------------------------------------------------


def test_status_and_show_json(sandbox: Sandbox, agent: RestartableAgent) -> None:
    sandbox.share_dir("docs")
    write_share(sandbox, "docs.toml", 'path = "/srv/smb/docs"\ncomment = "Documents"\n')
    broken = write_share(sandbox, "broken.toml", 'path = "/srv/smb/broken"\nread_only = maybe\n')
    agent.wait_status(lambda s: s["shares"].get("docs", {}).get("state") == "served" and "broken.toml" in s["files"])
    wait_served(sandbox, "docs")

    result = smbgwctl(sandbox.root, "status", "--json")
    assert result.returncode == 1, "an invalid file is a problem to report"
    status = json.loads(result.stdout)
    docs = status["shares"]["docs"]
    assert (docs["state"], docs["mode"], docs["path"]) == ("served", "native", "/srv/smb/docs")
    assert docs["file"] == "docs.toml"
    assert status["files"]["broken.toml"]["valid"] is False
    assert status["files"]["broken.toml"]["problems"][0]["line"] == 2

    text = smbgwctl(sandbox.root, "status").stdout
    assert any(line.split()[:2] == ["docs", "served"] for line in text.splitlines()), text
    assert "broken.toml:2" in text

    result = smbgwctl(sandbox.root, "show", "docs", "--json")
    assert result.returncode == 0, result.stderr
    detail = json.loads(result.stdout)
    assert detail["name"] == "docs" and detail["state"] == "served"
    assert detail["file_status"]["valid"] is True
    assert json.loads(smbgwctl(sandbox.root, "show", "DOCS", "--json").stdout)["name"] == "docs"
    text = smbgwctl(sandbox.root, "show", "docs").stdout
    assert "served" in text and "/srv/smb/docs" in text

    result = smbgwctl(sandbox.root, "show", "nosuch")
    assert result.returncode == 1 and "no share named 'nosuch'" in result.stderr

    broken.unlink()
    agent.wait_status(lambda s: "broken.toml" not in s["files"])
    assert smbgwctl(sandbox.root, "status").returncode == 0
