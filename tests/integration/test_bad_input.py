"""A bad file never takes anything down: real agent, real smbd, real smbclient.

Two good shares are served (and a third that is later broken by an edit), then every
kind of bad input in BAD_INPUTS is dropped into shares.d at once, each as its own file.
For each kind the agent must report the file and the reason (status.json, `smbgwctl
status --json`, `smbgwctl validate`), and the good shares must keep being served with
their data, their generated config unchanged, and nothing from the bad files in it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, served, wait_for, write_share

pytestmark = pytest.mark.integration



@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """The `sandbox` fixture's directory, directly under /tmp instead of pytest's basetemp.

    smbd serves as an unprivileged user, who must traverse down to the share directories.
    pytest resets /tmp/pytest-of-root to mode 0700 whenever any pytest session starts, so
    with the default tmp_path a concurrent test run makes every share fail with "chdir:
    Permission denied" in the middle of this test.
    """
    path = Path(tempfile.mkdtemp(prefix="smbgw-bad-input-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Every string a bad file tries to smuggle into smb.conf carries this marker, so one grep
# over the generated configuration proves none of it got through.
MARK = "INJ3CT"
Writer = Callable[[Path], None]


def atomically(target: Path, fill: Callable[[Path], object]) -> None:
    """Create the file under a dot-name (ignored by the agent), then rename it into place,
    so the agent never sees a half-written bad file and one pass sees the final state."""
    temp = target.with_name(f".{target.name}.tmp")
    fill(temp)
    os.rename(temp, target)


def text(body: str) -> Writer:
    return lambda target: atomically(target, lambda temp: temp.write_text(body, encoding="utf-8"))


def raw(data: bytes) -> Writer:
    return lambda target: atomically(target, lambda temp: temp.write_bytes(data))


def unreadable(body: str) -> Writer:
    def fill(temp: Path) -> None:
        temp.write_text(body)
        temp.chmod(0)

    return lambda target: atomically(target, fill)


def symlink(to: str) -> Writer:
    return lambda target: atomically(target, lambda temp: temp.symlink_to(to))


def directory() -> Writer:
    return lambda target: atomically(target, lambda temp: temp.mkdir())


def huge_file(size: int) -> Writer:
    def fill(temp: Path) -> None:
        with open(temp, "wb") as handle:
            handle.write(f'path = "/srv/smb/{MARK}_big"\n'.encode())
            handle.write(b"# padding\n" * (size // 10))

    return lambda target: atomically(target, fill)


@dataclass(frozen=True)
class Bad:
    file: str
    write: Writer
    reason: str  # must appear in a problem message for this file


_rng = random.Random(7)
GARBAGE = bytes(_rng.randrange(256) for _ in range(4096)) + b"\x00" + MARK.encode()
HUNDRED_K_KEYS = f'path = "/srv/smb/{MARK}_keys"\n' + "".join(f"k{i}=1\n" for i in range(100_000))

BAD_INPUTS = [
    Bad("syntax.toml", text(f'path = "/srv/smb/{MARK}\ncomment = "x"\n'), "TOML syntax error"),
    Bad("type_path.toml", text("path = 5\n"), "must be a string"),
    Bad("type_read_only.toml", text(f'path = "/srv/smb/{MARK}_ro"\nread_only = "yes"\n'), "must be true or false"),
    Bad("unknown_key.toml", text(f'path = "/srv/smb/{MARK}_uk"\ncolour = "red"\n'), "unknown key"),
    Bad("missing_path.toml", text(f'comment = "{MARK} no path"\n'), "required key is missing"),
    Bad("relative.toml", text(f'path = "srv/smb/{MARK}"\n'), "relative"),
    Bad("outside.toml", text(f'path = "/opt/{MARK}"\n'), "outside the allowed roots"),
    Bad("system_dir.toml", text('path = "/etc"\n'), "system directory"),
    Bad("dotdot_etc.toml", text('path = "/srv/../etc"\n'), "'..'"),
    Bad("dotdot_deep.toml", text('path = "/srv/smb/../../etc"\n'), "'..'"),
    Bad("symlink_escape.toml", text(f'path = "/srv/smb/escape/{MARK}"\n'), "outside the sandbox root"),
    Bad(
        "comment_newline.toml",
        text(f'path = "/srv/smb/{MARK}_cn"\ncomment = "x\\n[{MARK}]\\npath = /etc"\n'),
        "control characters",
    ),
    Bad("comment_cr.toml", text(f'path = "/srv/smb/{MARK}_cr"\ncomment = "x\\r{MARK}"\n'), "control characters"),
    Bad("comment_u2028.toml", text(f'path = "/srv/smb/{MARK}_ls"\ncomment = "x\\u2028{MARK}"\n'), "control characters"),
    Bad("comment_nul.toml", text(f'path = "/srv/smb/{MARK}_nul"\ncomment = "x\\u0000{MARK}"\n'), "control characters"),
    Bad("comment_percent.toml", text(f'path = "/srv/smb/{MARK}_pc"\ncomment = "{MARK} %(id)"\n'), "'%'"),
    Bad("comment_backslash.toml", text(f'path = "/srv/smb/{MARK}_bs"\ncomment = "{MARK} \\\\"\n'), "backslash"),
    Bad(
        "users_bracket.toml",
        text(f'path = "/srv/smb/{MARK}_ub"\nvalid_users = ["bob]", "[{MARK}]"]\n'),
        "forbidden characters",
    ),
    Bad(
        "users_newline.toml",
        text(f'path = "/srv/smb/{MARK}_un"\nvalid_users = ["bob\\ninclude = /etc/{MARK}"]\n'),
        "control characters",
    ),
    Bad("global.toml", text(f'path = "/srv/smb/{MARK}_global"\n'), "reserved"),
    Bad("IPC$.toml", text(f'path = "/srv/smb/{MARK}_ipc"\n'), "reserved"),
    Bad("long_name.toml", text(f'name = "{"n" * 81}"\npath = "/srv/smb/{MARK}_long"\n'), "too long"),
    Bad(
        "alpha_copy.toml",
        text(f'name = "ALPHA"\npath = "/srv/smb/{MARK}_dup"\nread_only = true\ncomment = "{MARK}"\n'),
        "declared in",
    ),
    Bad("empty.toml", text(""), "required key is missing"),
    Bad("binary.toml", raw(GARBAGE), "NUL"),
    Bad("not_utf8.toml", raw(f'path = "/srv/smb/{MARK}'.encode() + b'\xff\xfe"\n'), "UTF-8"),
    Bad("ten_mb.toml", huge_file(10 * 1024 * 1024), "too large"),
    Bad("shadow.toml", symlink("/etc/shadow"), "symbolic link"),
    Bad("mode000.toml", unreadable(f'path = "/srv/smb/{MARK}_000"\n'), "not readable"),
    Bad("x.toml", directory(), "is a directory"),
    # Deep enough to cost tomllib ~100 MB without the agent's check, not enough to kill the host.
    Bad("deep.toml", text(f'path = "/srv/smb/{MARK}_deep"\n' + "a" + ".b" * 5000 + " = 1\n"), "too deep"),
    Bad("hundred_k_keys.toml", text(HUNDRED_K_KEYS), "unknown key"),
    Bad("big_integer.toml", text(f'path = "/srv/smb/{MARK}_int"\nx = {"1" * 5000}\n'), "cannot be read"),
    Bad("ha.toml", text(f'path = "/srv/smb/{MARK}_h"\n[ha]\nvip = "192.0.2.0/24"\ninterface = "e0"\n'),
        "network address"),
    Bad("quota_gb.toml", text(f'path = "/srv/smb/{MARK}_q"\n[quota]\nsize = "500GB"\n'), "sizes are binary"),
    Bad("quota_space.toml", text(f'path = "/srv/smb/{MARK}_s"\n[quota]\nsize = "10 G"\n'), "no space between"),
    Bad("quota_zero.toml", text(f'path = "/srv/smb/{MARK}_z"\n[quota]\nsize = 0\n'), "out of range"),
    Bad("quota_exp.toml", text(f'path = "/srv/smb/{MARK}_e"\n[quota]\nsize = "1e3G"\n'), "is not a size"),
    Bad("quota_backend.toml", text(f'path = "/srv/smb/{MARK}_b"\n[quota]\nsize = "1G"\nbackend = "ntfs"\n'),
        "must be one of"),
    Bad(
        "options.toml",
        text(f'path = "/srv/smb/{MARK}_o"\n[options]\n"root preexec" = "/bin/touch /tmp/{MARK}"\n'),
        "allow_custom_options",
    ),
    Bad("mode_vm.toml", text(f'path = "/srv/smb/{MARK}_vm"\nmode = "vm"\n'), "needs a [vm] table"),
    Bad("mode_jail.toml", text(f'path = "/srv/smb/{MARK}_jail"\nmode = "jail"\n'),
        "not provided by any enabled plugin"),
    Bad("mode_lxc.toml", text(f'path = "/srv/smb/{MARK}_lxc"\nmode = "lxc"\n'), "needs an [lxc] table"),
    # A good file broken by an edit: reported, and its share keeps its last good spec.
    Bad("gamma.toml", text(f'path = "/srv/smb/gamma"\ncomment = "{MARK} edit"\nread_only = "yes"\n'), "true or false"),
]
GOOD = ("alpha", "beta", "gamma")


def messages(info: dict[str, Any]) -> str:
    return " | ".join(str(p.get("message")) for p in info.get("problems", []))


def check_report(name: str, info: dict[str, Any] | None, reason: str) -> list[str]:
    """Problems with how one file is reported (empty = fine)."""
    if info is None:
        return [f"{name}: not in the report"]
    errors = []
    if info.get("valid") is not False:
        errors.append(f"{name}: valid is {info.get('valid')!r}")
    problems = info.get("problems") or []
    if not problems:
        errors.append(f"{name}: no problem reported")
    if not any(reason in str(p.get("message")) for p in problems):
        errors.append(f"{name}: no problem mentions {reason!r}: {messages(info)[:300]}")
    for problem in problems:
        if not str(problem.get("file", "")).endswith("/" + name):
            errors.append(f"{name}: problem names file {problem.get('file')!r}")
    return errors


def assert_served(box: Sandbox, share: str) -> None:
    result = box.smbclient(share, "ls", timeout=10)
    assert result.returncode == 0, f"[{share}] is not served: {result.stdout[-500:]} {result.stderr[-500:]}"


def generated(box: Sandbox) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in sorted(box.paths.samba_dir.glob("*.conf"))}


def read_back(box: Sandbox, share: str, expected: str) -> bool:
    local = box.root / f"readback-{share}.txt"
    local.unlink(missing_ok=True)
    result = box.smbclient(share, f"get keep.txt {local}")
    if result.returncode == 0 and local.exists() and local.read_text() == expected:
        return True
    print(f"read_back({share}) failed: rc={result.returncode} out={result.stdout!r} err={result.stderr!r}")
    return False


def alive(agent: AgentProcess) -> dict[str, Any]:
    assert agent.proc is not None and agent.proc.poll() is None, "agent died:\n" + agent.log_text()[-3000:]
    status = agent.status()
    assert status is not None
    return status


def test_bad_inputs_are_reported_and_good_shares_keep_serving(sandbox: Sandbox, agent: AgentProcess) -> None:
    # ---- two good shares (and gamma, to be broken by an edit), with data in them ----
    outside = sandbox.root.parent / "outside-the-sandbox"
    outside.mkdir()
    (sandbox.root / "srv/smb/escape").symlink_to(outside)  # a way out of the sandbox
    contents = {}
    for name in GOOD:
        sandbox.share_dir(name)
        write_share(sandbox, f"{name}.toml", f'path = "/srv/smb/{name}"\ncomment = "{name} data"\n')
    wait_for(lambda: all(served(sandbox, name) for name in GOOD), 20)
    for name in GOOD:
        contents[name] = f"{name} was written before the bad input\n"
        upload = sandbox.root / f"upload-{name}.txt"
        upload.write_text(contents[name])
        result = sandbox.smbclient(name, f"put {upload} keep.txt")
        assert result.returncode == 0, result.stdout + result.stderr
        assert read_back(sandbox, name, contents[name])
    wait_for(lambda: all((agent.status() or {}).get("shares", {}).get(n, {}).get("state") == "served" for n in GOOD))
    before = alive(agent)
    digests = {name: before["shares"][name]["digest"] for name in GOOD}
    config_before = generated(sandbox)
    assert {f"share-{name}.conf" for name in GOOD} <= set(config_before)
    passes_before = before["passes"]

    # ---- every kind of bad input at once ----
    for bad in BAD_INPUTS:
        bad.write(sandbox.shares_dir / bad.file)  # gamma.toml is replaced by the rename

    def not_yet_seen() -> list[str]:
        for conf, body in generated(sandbox).items():  # never, not even for one pass
            assert MARK not in body, (conf, body)
        status = alive(agent)
        files = status.get("files", {})
        pending = [bad.file for bad in BAD_INPUTS if files.get(bad.file, {}).get("valid") is not False]
        return pending if status["passes"] > passes_before else ["(no pass yet)"]

    try:
        wait_for(lambda: not not_yet_seen(), 30, 0.1)
    except AssertionError:
        files = (agent.status() or {}).get("files", {})
        pytest.fail(f"not reported as invalid within 30 s: {[(f, files.get(f)) for f in not_yet_seen()]}")
    status = alive(agent)
    files = status["files"]

    # ---- (a) each file is reported with its name and the reason: status.json ----
    failures = [error for bad in BAD_INPUTS for error in check_report(bad.file, files.get(bad.file), bad.reason)]
    # A duplicate is reported on both files; the first one keeps serving what is live.
    failures += check_report("alpha.toml", files.get("alpha.toml"), "alpha_copy.toml")
    assert files["alpha.toml"]["serving"] == "applied", files["alpha.toml"]
    assert files["gamma.toml"]["serving"] == "last-good", files["gamma.toml"]
    assert files["beta.toml"] == {
        "valid": True, "share": "beta", "serving": "current", "problems": [], "warnings": [],
    }
    # Big or deep input is refused with a bounded report, not a flood.
    assert len(files["hundred_k_keys.toml"]["problems"]) <= 100
    assert not failures, "\n".join(failures)

    # ---- ... and `smbgwctl status --json` (exit 1) ----
    result = agent.ctl("status", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    cli_files = json.loads(result.stdout)["files"]
    failures = [error for bad in BAD_INPUTS for error in check_report(bad.file, cli_files.get(bad.file), bad.reason)]
    assert not failures, "\n".join(failures)
    human = agent.ctl("status")
    assert human.returncode == 1
    for bad in BAD_INPUTS:
        assert f"invalid file {bad.file}" in human.stdout, bad.file
    assert "invalid file gamma.toml (serving its last good version)" in human.stdout
    assert "invalid file alpha.toml (serving the live version)" in human.stdout

    # ---- ... and `smbgwctl validate` on the files (exit 1, each invalid with its reason) ----
    result = agent.ctl("validate", "--json", *(str(sandbox.shares_dir / bad.file) for bad in BAD_INPUTS))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    validated = {Path(item["file"]).name: item for item in json.loads(result.stdout)}
    failures = [error for bad in BAD_INPUTS for error in check_report(bad.file, validated.get(bad.file), bad.reason)]
    assert not failures, "\n".join(failures)
    one = agent.ctl("validate", str(sandbox.shares_dir / "type_read_only.toml"))
    assert one.returncode == 1
    assert f"{sandbox.shares_dir / 'type_read_only.toml'}:2: read_only: must be true or false" in one.stdout

    # ---- (b) every good share keeps being served, unchanged, with its data ----
    for name in GOOD:
        assert_served(sandbox, name)
        assert read_back(sandbox, name, contents[name]), name
        share = status["shares"][name]
        assert share["state"] == "served" and share["digest"] == digests[name], share
    assert generated(sandbox) == config_before
    assert set(status["shares"]) == set(GOOD)  # nothing from the bad files is served
    for name in ("dup", "ro", "o"):
        assert not served(sandbox, f"{MARK}_{name}")

    # ---- nothing a bad file contained reaches the configuration or the disk ----
    for conf in [*sandbox.paths.samba_dir.rglob("*"), sandbox.smb_conf]:
        if conf.is_file():
            body = conf.read_text(errors="replace")
            for needle in (MARK, "preexec", "/etc/shadow", "include = /etc"):
                assert needle not in body, (conf, needle)
    created = [p for p in (sandbox.root, outside) for p in p.rglob(f"*{MARK}*")]
    assert created == [], created
    assert not Path(f"/tmp/{MARK}").exists()
    alive(agent)

    # ---- the broken edit recovers when the file is fixed; the duplicate goes away ----
    write_share(sandbox, "gamma.toml", 'path = "/srv/smb/gamma"\ncomment = "gamma fixed"\n')
    (sandbox.shares_dir / "alpha_copy.toml").unlink()

    def recovered() -> bool:
        files = alive(agent)["files"]
        return (
            files.get("gamma.toml", {}).get("serving") == "current"
            and files["gamma.toml"]["valid"]
            and files.get("alpha.toml", {}).get("valid") is True
            and "comment = gamma fixed" in generated(sandbox).get("share-gamma.conf", "")
        )

    wait_for(recovered, 20, 0.1)
    for name in GOOD:
        assert_served(sandbox, name)
        assert read_back(sandbox, name, contents[name]), name
    final = alive(agent)
    assert final["shares"]["alpha"]["digest"] == digests["alpha"]
    assert final["shares"]["gamma"]["digest"] != digests["gamma"]
    log = agent.log_text()
    for name in GOOD:
        assert f"share {name}: removed" not in log, name
