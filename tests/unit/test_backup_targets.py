"""Off-host backup targets: restic for real (Debian 12's restic 0.14, a local repository
in a temporary directory), Proxmox Backup Server through the stand-in client
(tests/support/pbs_client_standin.py), which refuses any command line the real client
would refuse, so these tests catch a wrong option name.

If restic is missing the restic tests skip, unless CI is set: then they fail (a skipped
real-tool test proves nothing)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from smbgw_plugins.backup.targets import (
    RemoteSnapshot,
    ResticTarget,
    Target,
    TargetError,
    backup_id,
    keep_rules,
    make_target,
    parse_pbs_snapshots,
    parse_restic_snapshots,
    password_path,
)

from smbgw_agent.effects.runner import CommandError, Completed, Runner
from smbgw_agent.model.paths import Paths
from tests.support import pbs_client_standin as standin

STANDIN = Path(__file__).resolve().parents[1] / "support" / "pbs_client_standin.py"
NODE = "pve1"
SECRET = "correct-horse-battery-staple"
PBS_SECRET = "pbs-token-secret-0123"
FINGERPRINT = ":".join(["ab"] * 32)
T1 = datetime(2026, 12, 1, 3, 0, 0, tzinfo=UTC)
T2 = datetime(2026, 12, 2, 3, 0, 0, tzinfo=UTC)
T3 = datetime(2026, 12, 3, 3, 0, 0, tzinfo=UTC)
RESTIC_ENV = {"PATH", "LANG", "TZ", "HOME", "RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE"}
PBS_ENV = {"PATH", "LANG", "TZ", "HOME", "PBS_PASSWORD_FILE", "PBS_FINGERPRINT"}


@dataclass
class RecordingRunner(Runner):
    """The agent's runner, recording what every command was given and what it answered."""

    calls: list[tuple[tuple[str, ...], dict[str, str], Completed | None]] = field(default_factory=list)

    def run(self, argv: Sequence[str], **kwargs: Any) -> Completed:
        env = dict(kwargs.get("env") or {})
        try:
            result = super().run(argv, **kwargs)
        except CommandError:
            self.calls.append((tuple(argv), env, None))
            raise
        self.calls.append((tuple(argv), env, result))
        return result

    def subcommands(self) -> list[str]:
        """restic's (after `--cache-dir DIR`) or the PBS client's subcommand of each call."""
        return [argv[argv.index("--cache-dir") + 2] if "--cache-dir" in argv else argv[1]
                for argv, _env, _result in self.calls]


# ---- fixtures -----------------------------------------------------------------------------


def restic_path() -> str:
    found = shutil.which("restic")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("restic is not installed, and CI is set: the restic tests must run")
        pytest.skip("restic is not installed")
    return found


@pytest.fixture
def restic() -> str:
    return restic_path()


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def cheapen_restic_key(repository: Path, password: bytes) -> None:
    """Re-encrypt the repository's master key under scrypt N=1024 instead of what
    `restic init` calibrated (0.5 s of CPU on this machine), which every restic command
    pays again to open the repository: without this the restic tests alone would take
    most of the suite's 30 s budget. The key file format is restic's documented one
    (doc/design.rst, "Keys, Encryption and MAC"): JSON with the scrypt parameters, a salt
    and `data` = IV || AES-256-CTR(master key JSON) || Poly1305-AES MAC, under 64 bytes
    derived by scrypt (32 encryption, 16 MAC AES key "k", 16 MAC "r"); the file's name is
    the SHA-256 of its content. Without the `cryptography` module the key stays as it is
    (the tests are then only slower)."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.poly1305 import Poly1305
    except ImportError:
        return

    def derive(salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes, bytes]:
        key = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=1 << 30, dklen=64)
        return key[:32], key[32:48], key[48:]

    def mac(message: bytes, iv: bytes, k: bytes, r: bytes) -> bytes:
        nonce_key = Cipher(algorithms.AES(k), modes.ECB()).encryptor().update(iv)  # one block: the MAC's nonce
        return Poly1305.generate_tag(r + nonce_key, message)

    (path,) = (repository / "keys").iterdir()
    key = json.loads(path.read_bytes())
    encrypt, k, r = derive(base64.b64decode(key["salt"]), key["N"], key["r"], key["p"])
    blob = base64.b64decode(key["data"])
    iv, ciphertext = blob[:16], blob[16:-16]
    assert mac(ciphertext, iv, k, r) == blob[-16:], "restic's key file format is not the documented one"
    master = Cipher(algorithms.AES(encrypt), modes.CTR(iv)).decryptor().update(ciphertext)
    salt, iv = os.urandom(64), os.urandom(16)
    encrypt, k, r = derive(salt, 1024, 8, 1)
    ciphertext = Cipher(algorithms.AES(encrypt), modes.CTR(iv)).encryptor().update(master)
    key.update(N=1024, r=8, p=1, salt=base64.b64encode(salt).decode(),
               data=base64.b64encode(iv + ciphertext + mac(ciphertext, iv, k, r)).decode())
    text = json.dumps(key).encode()
    path.unlink()
    (repository / "keys" / hashlib.sha256(text).hexdigest()).write_bytes(text)


@pytest.fixture(scope="module")
def restic_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty repository with password SECRET, made once; each test gets a copy."""
    base = tmp_path_factory.mktemp("restic-template")
    env = {"PATH": os.environ["PATH"], "HOME": str(base), "RESTIC_REPOSITORY": str(base / "repo"),
           "RESTIC_PASSWORD_FILE": str(secret_file(base / "pw", SECRET))}
    subprocess.run([restic_path(), "init"], env=env, check=True, capture_output=True, timeout=60)
    cheapen_restic_key(base / "repo", SECRET.encode())
    return base / "repo"


@pytest.fixture
def repo(restic_template: Path, tmp_path: Path) -> Path:
    shutil.copytree(restic_template, tmp_path / "repo")
    return tmp_path / "repo"


@pytest.fixture
def password(tmp_path: Path) -> Path:
    return secret_file(tmp_path / "secrets" / "restic", SECRET)


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


def restic_target(tmp_path: Path, runner: Runner, password: Path, repository: str | None = None) -> Target:
    settings = {"type": "restic", "repository": repository or str(tmp_path / "repo"), "password_file": "/x",
                "credential": None, "namespace": None, "fingerprint": None, "keep": {"daily": 7}, "name": "offsite"}
    return make_target("offsite", settings, runner, password, NODE, tmp_path / "cache")


def write_tree(root: Path, files: Mapping[str, bytes]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


FIRST_FILES = {
    "docs/report.txt": b"version 1 of the report\n",
    "docs/sub/deep.bin": bytes(range(256)) * 300,
    "top.txt": b"top\n",
    "odd name [1]*?.txt": b"glob characters in a name\n",
    "unchanged/a.txt": b"a" * 5000,
}


def snapshot_pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two snapshots of a share as a btrfs share has them: the second shares every
    unchanged file with the first (hard links: same inode, mtime and ctime, as in a
    btrfs or ZFS snapshot), one file is rewritten and one is new."""
    snaps = tmp_path / "share" / ".snapshots"
    first = snaps / "smbgw-2026.12.01-03.00.00"
    write_tree(first, FIRST_FILES)
    (first / "docs" / "report.txt").chmod(0o640)
    (first / "docs" / "sub").chmod(0o750)
    (first / "link").symlink_to("top.txt")
    second = snaps / "smbgw-2026.12.02-03.00.00"
    for path in sorted(first.rglob("*")):
        twin = second / path.relative_to(first)
        twin.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            twin.symlink_to(os.readlink(path))
        elif path.is_dir():
            twin.mkdir(exist_ok=True)
        else:
            os.link(path, twin)
    (second / "docs" / "report.txt").unlink()
    (second / "docs" / "report.txt").write_bytes(b"version 2, longer than the first one\n")
    (second / "new.txt").write_bytes(b"new in the second snapshot\n")
    return first, second


def tree(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry under root: kind, permission bits, content or link target."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[relative] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            found[relative] = ("dir", path.stat().st_mode & 0o7777, b"")
        else:
            found[relative] = ("file", path.stat().st_mode & 0o7777, path.read_bytes())
    return found


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


# ---- the password file ---------------------------------------------------------------------


def test_a_private_password_file_is_accepted_and_its_path_returned(tmp_path: Path) -> None:
    paths = Paths.under(tmp_path)
    secret_file(tmp_path / "etc" / "smbgw" / "secrets" / "restic", SECRET)
    got = password_path("/etc/smbgw/secrets/restic", None, paths.host, {})
    assert got == tmp_path / "etc" / "smbgw" / "secrets" / "restic"


@pytest.mark.parametrize("case", ["0644", "0640", "0602", "missing", "symlink", "directory", "empty",
                                  "blank first line", "relative", "foreign owner"])
def test_an_unsafe_password_file_is_refused(tmp_path: Path, case: str) -> None:
    paths = Paths.under(tmp_path)
    target = tmp_path / "etc" / "pw"
    declared = "/etc/pw"
    if case.startswith("06"):
        secret_file(target, SECRET, int(case, 8))
    elif case == "symlink":
        secret_file(tmp_path / "etc" / "real", SECRET)
        target.symlink_to(tmp_path / "etc" / "real")
    elif case == "directory":
        target.mkdir(parents=True)
        target.chmod(0o700)
    elif case == "empty":
        secret_file(target, "").write_bytes(b"")
    elif case == "blank first line":
        secret_file(target, "\nsecond line")
    elif case == "relative":
        declared = "etc/pw"
    elif case == "foreign owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to give a file to another user")
        os.chown(secret_file(target, SECRET), 12345, 12345)
    with pytest.raises(TargetError) as caught:
        password_path(declared, None, paths.host, {})
    assert caught.value.reason == "password"
    assert SECRET not in str(caught.value)


def test_a_systemd_credential_is_read_from_the_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "run" / "credentials" / "smbgw-agent.service"
    secret_file(credentials / "restic", SECRET, 0o400)
    host = Paths.under(tmp_path).host
    assert password_path(None, "restic", host, {"CREDENTIALS_DIRECTORY": str(credentials)}) == credentials / "restic"
    for environ, name in (({}, "restic"), ({"CREDENTIALS_DIRECTORY": str(credentials)}, "../restic"),
                          ({"CREDENTIALS_DIRECTORY": str(credentials)}, "other")):
        with pytest.raises(TargetError) as caught:
            password_path(None, name, host, environ)
        assert caught.value.reason == "password"
    with pytest.raises(TargetError):
        password_path("/etc/pw", "restic", host, {"CREDENTIALS_DIRECTORY": str(credentials)})
    with pytest.raises(TargetError):
        password_path(None, None, host, {})


# ---- restic, for real -------------------------------------------------------------------------


def assert_private(calls: list[tuple[tuple[str, ...], dict[str, str], Completed | None]], password: Path,
                   repository: Path) -> None:
    """The password reached restic as a file name in its environment, and nothing else
    did: never on argv (where `ps` shows it), never as a value, no agent variables."""
    assert calls
    for argv, env, _result in calls:
        shown = " ".join(argv)
        assert SECRET not in shown and str(repository) not in shown
        assert not {"-r", "--repo", "--password", "-p", "--password-file", "--password-command"} & set(argv)
        assert set(env) == RESTIC_ENV
        assert env["RESTIC_PASSWORD_FILE"] == str(password) and env["RESTIC_REPOSITORY"] == str(repository)
        assert env["TZ"] == "UTC" and env["HOME"] == str(password.parents[1] / "cache")
        assert all(SECRET not in value for value in env.values())


def test_restic_makes_its_repository_on_the_first_backup_and_gets_a_password_file_only(
        restic: str, tmp_path: Path, runner: RecordingRunner, password: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD", "from-the-agents-environment")  # must not reach restic
    monkeypatch.setenv("SMBGW_CANARY", "must-not-leak")
    first, _second = snapshot_pair(tmp_path)
    target = restic_target(tmp_path, runner, password)
    assert target.kind == "restic" and target.snapshots("Finance", 30) == []  # no repository yet: nothing sent
    one = target.backup("Finance", first, first.name, T1, 60)
    assert (one.time, one.snapshot) == (T1, first.name) and len(one.id) == 64
    assert runner.subcommands() == ["cat", "cat", "init", "snapshots", "backup", "snapshots"]
    assert_private(runner.calls, password, tmp_path / "repo")
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


def assert_restores(target: Target, share: str, first: tuple[RemoteSnapshot, Path],
                    second: tuple[RemoteSnapshot, Path], missing: str, tmp_path: Path) -> tuple[Path, Path]:
    """The restore contract every target keeps: chosen files (names with glob characters
    too) into INTO/NAME, byte for byte; the whole snapshot; a file it does not hold is
    reason "missing". Returns the two directories restored into (`all`, `fresh`)."""
    (one, one_source), (two, two_source) = first, second
    restored = target.restore(share, one, ["docs/report.txt", "odd name [1]*?.txt"], tmp_path, 60)
    assert restored == tmp_path / one_source.name
    assert sorted(p.relative_to(restored).as_posix() for p in restored.rglob("*")) == [
        "docs", "docs/report.txt", "odd name [1]*?.txt"]
    assert (restored / "docs" / "report.txt").read_bytes() == FIRST_FILES["docs/report.txt"]
    into = tmp_path / "all"
    into.mkdir()
    assert tree(target.restore(share, two, None, into, 60)) == tree(two_source)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(TargetError) as caught:
        target.restore(share, one, [missing], fresh, 60)
    assert caught.value.reason == "missing"
    return into, fresh


def test_restic_backs_up_lists_restores_and_forgets(tmp_path: Path, repo: Path, runner: RecordingRunner,
                                                   password: Path) -> None:
    first, second = snapshot_pair(tmp_path)
    target = restic_target(tmp_path, runner, password)
    one = target.backup("Finance", first, first.name, T1, 60)
    assert "--parent" not in runner.calls[-2][0]
    two = target.backup("Finance", second, second.name, T2, 60)
    backup_argv, _env, answer = runner.calls[-2]
    assert backup_argv[backup_argv.index("backup"):] == (
        "backup", "--json", "--quiet", "--host", NODE, "--tag", "smbgw-share=finance", "--tag", "smbgw",
        "--tag", f"smbgw-snapshot={second.name}", "--time", "2026-12-02 03:00:00", "--parent", one.id, ".")
    assert backup_argv[:3] == (shutil.which("env"), "-C", str(second))
    assert answer is not None
    summary = json.loads(answer.stdout.splitlines()[-1])  # the parent spared re-reading the unchanged files:
    assert (summary["files_unmodified"], summary["files_changed"], summary["files_new"]) == (4, 1, 1)

    assert target.snapshots("FINANCE", 30) == [one, two]  # share names are case-insensitive
    assert target.snapshots("other share", 30) == []

    into, fresh = assert_restores(target, "Finance", (one, first), (two, second), "not/there.txt", tmp_path)
    with pytest.raises(TargetError) as caught:
        target.restore("Finance", one, ["../etc/passwd"], fresh, 60)
    assert caught.value.reason == "invalid"
    with pytest.raises(TargetError) as caught:  # into/NAME exists: never restore over something
        target.restore("Finance", two, None, into, 60)
    assert caught.value.reason == "invalid"

    target.forget("Finance", {"last": 1, "daily": 0}, 60)
    assert target.snapshots("Finance", 30) == [two]
    forget_argv = next(argv for argv, _env, _r in runner.calls if "forget" in argv)
    assert forget_argv[forget_argv.index("forget"):] == (
        "forget", "--prune", "--host", NODE, "--tag", "smbgw-share=finance", "--group-by", "host", "--keep-last", "1")
    assert "restore" in runner.subcommands() and "forget" in runner.subcommands()
    assert_private(runner.calls, password, repo)


def test_restic_wrong_password_and_a_credential(tmp_path: Path, repo: Path, runner: RecordingRunner) -> None:
    first, _second = snapshot_pair(tmp_path)
    credentials = tmp_path / "credentials"
    secret_file(credentials / "restic", SECRET, 0o400)
    via_credential = password_path(None, "restic", Paths.under(tmp_path).host,
                                   {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert restic_target(tmp_path, runner, via_credential).snapshots("Finance", 30) == []
    assert runner.calls[0][1]["RESTIC_PASSWORD_FILE"] == str(credentials / "restic")
    target = restic_target(tmp_path, runner, secret_file(tmp_path / "secrets" / "wrong", "not-the-password"))
    attempts: list[Callable[[], object]] = [lambda: target.snapshots("Finance", 30),
                                            lambda: target.backup("Finance", first, first.name, T1, 30)]
    for attempt in attempts:
        with pytest.raises(TargetError) as caught:
            attempt()
        assert caught.value.reason == "password", caught.value
        assert "not-the-password" not in str(caught.value)
    assert "init" not in runner.subcommands()  # a wrong password is not "no repository"


def test_restic_credentials_in_a_repository_url_are_redacted(restic: str, tmp_path: Path, runner: RecordingRunner,
                                                              password: Path) -> None:
    target = restic_target(tmp_path, runner, password, "rest:http://smbgw:url-pass-9876@127.0.0.1:1/repo")
    with pytest.raises(TargetError) as caught:
        target.snapshots("Finance", 10)
    # restic 0.14 gives up on a refused connection at once; 0.18 (trixie) keeps retrying.
    assert caught.value.reason in ("unreachable", "timeout"), caught.value
    assert "url-pass-9876" not in str(caught.value) and "url-pass-9876" not in repr(target)


def wait_for_lock(repository: Path, proc: subprocess.Popen[bytes]) -> None:
    started = time.monotonic()
    while not any((repository / "locks").iterdir()):
        assert proc.poll() is None, "restic ended before taking its lock"
        assert time.monotonic() - started < 10, "restic took no lock"
        time.sleep(0.01)


def restic_env(repository: Path, password: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(repository.parent), "RESTIC_REPOSITORY": str(repository),
            "RESTIC_PASSWORD_FILE": str(password), "RESTIC_CACHE_DIR": str(repository.parent / "cache")}


def test_a_stale_lock_of_a_killed_restic_backup_is_removed(restic: str, tmp_path: Path, repo: Path,
                                                           runner: RecordingRunner, password: Path) -> None:
    """A restic backup killed with SIGKILL (as the runner's timeout kills) leaves its lock
    behind. `backup --stdin` holds it while it waits for input, so it is killed while
    certainly holding it (a large file set would race with the backup's end). A backup's
    lock is shared: the next backup runs beside it; forget --prune needs the exclusive
    lock and gets it after `restic unlock` removed the stale one."""
    first, second = snapshot_pair(tmp_path)
    target = restic_target(tmp_path, runner, password)
    target.backup("Finance", first, first.name, T1, 60)
    proc = subprocess.Popen([restic, "backup", "--stdin", "--stdin-filename", "big.bin", "--quiet"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=restic_env(repo, password))
    assert proc.stdin is not None
    proc.stdin.write(b"\0" * (1 << 20))
    proc.stdin.flush()
    wait_for_lock(repo, proc)
    proc.kill()
    proc.wait()
    proc.stdin.close()
    runner.calls.clear()
    assert target.backup("Finance", second, second.name, T2, 60).snapshot == second.name
    target.forget("Finance", {"last": 1}, 60)
    assert runner.subcommands()[-3:] == ["forget", "unlock", "forget"]
    assert not any((repo / "locks").iterdir())


def test_a_stale_exclusive_lock_is_removed_and_a_live_one_is_not(restic: str, tmp_path: Path, repo: Path,
                                                                runner: RecordingRunner, password: Path) -> None:
    """`restic key passwd` takes the exclusive lock, then waits on a FIFO for the new
    password: alive, its lock makes the backup fail with reason "locked" (unlock leaves
    it); killed, its stale lock is removed and the backup runs."""
    first, _second = snapshot_pair(tmp_path)
    target = restic_target(tmp_path, runner, password)
    fifo = tmp_path / "new-password"
    os.mkfifo(fifo)
    proc = subprocess.Popen([restic, "key", "passwd", "--new-password-file", str(fifo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=restic_env(repo, password))
    try:
        wait_for_lock(repo, proc)
        with pytest.raises(TargetError) as caught:
            target.backup("Finance", first, first.name, T1, 60)
        assert caught.value.reason == "locked", caught.value
    finally:
        proc.kill()
        proc.wait()
    assert target.backup("Finance", first, first.name, T1, 60).snapshot == first.name
    assert runner.subcommands().count("unlock") == 2
    assert not any((repo / "locks").iterdir())


def test_a_hanging_restic_times_out(tmp_path: Path, runner: RecordingRunner, password: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(tmp_path / "bin", "restic", "exec sleep 600\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    started = time.monotonic()
    with pytest.raises(TargetError) as caught:
        restic_target(tmp_path, runner, password).snapshots("Finance", 0.5)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("output", [
    "echo 'this is not json {'",
    "echo '{\"id\": 1}'",
    "echo '[{\"id\": \"abc\", \"time\": \"yesterday\"}]'",
    "echo '[{\"id\": \"" + "a" * 64 + "\", \"time\": \"2026-12-01T03:00:00Z\", \"hostname\": \"pve1\", "
    "\"tags\": [\"smbgw\", \"smbgw-share=finance\"]}]'",
    "head -c 20000000 /dev/zero",
])
def test_garbage_from_restic_snapshots_is_reason_garbage(tmp_path: Path, runner: RecordingRunner, password: Path,
                                                         monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    fake_tool(tmp_path / "bin", "restic", f'for a in "$@"; do [ "$a" = snapshots ] && {{ {output}; exit 0; }}; done\n'
                                          "exit 0\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    with pytest.raises(TargetError) as caught:
        restic_target(tmp_path, runner, password).snapshots("Finance", 20)
    assert caught.value.reason == "garbage", caught.value


def test_restic_not_installed_is_reason_tool_missing(tmp_path: Path, runner: RecordingRunner, password: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    first, _second = snapshot_pair(tmp_path)
    with pytest.raises(TargetError) as caught:
        restic_target(tmp_path, runner, password).backup("Finance", first, first.name, T1, 10)
    assert caught.value.reason == "tool_missing"
    assert runner.calls == []


def test_restic_snapshot_listing_parser() -> None:
    ident = "0123456789abcdef" * 4
    entry = {"id": ident, "time": "2026-12-01T04:00:00.123456789+01:00", "hostname": NODE,
             "tags": ["smbgw", "smbgw-share=finance", "smbgw-snapshot=smbgw-2026.12.01-03.00.00"], "paths": ["/x"]}
    other_host = dict(entry, hostname="pve2", id="f" * 64)
    got = parse_restic_snapshots(json.dumps([entry, other_host]), NODE, "smbgw-share=finance")
    assert got == [RemoteSnapshot(ident, datetime(2026, 12, 1, 3, 0, 0, 123456, tzinfo=UTC),
                                  "smbgw-2026.12.01-03.00.00")]
    assert parse_restic_snapshots("[]", NODE, "smbgw-share=finance") == []
    for bad in ("", "null", "{}", "[1]", json.dumps([dict(entry, tags="smbgw")]),
                json.dumps([dict(entry, tags=["smbgw", "smbgw-share=finance", "smbgw-snapshot=a,b c"])])):
        with pytest.raises(TargetError) as caught:
            parse_restic_snapshots(bad, NODE, "smbgw-share=finance")
        assert caught.value.reason == "garbage"


# ---- Proxmox Backup Server, through the stand-in client ------------------------------------------


@dataclass
class Pbs:
    tmp: Path
    store: Path
    bin: Path
    password: Path

    def install(self, **env: str) -> None:
        """The stand-in as `proxmox-backup-client`; the test-only variables it needs are
        set by this wrapper, since the target passes the client a minimal environment."""
        exports = "".join(f"export {key}='{value}'\n" for key, value in
                          {"SMBGW_TEST_PBS_STORE": str(self.store), **env}.items())
        fake_tool(self.bin, "proxmox-backup-client", f'{exports}exec {sys.executable} {STANDIN} "$@"\n')

    def target(self, runner: Runner, password: Path | None = None, **settings: Any) -> Target:
        table = {"type": "pbs", "repository": "smbgw@pbs!agent@pbs1.example:store1", "namespace": "pve1",
                 "fingerprint": FINGERPRINT, "password_file": "/etc/smbgw/secrets/pbs1", "credential": None,
                 "keep": None, "name": "pbs1", **settings}
        return make_target("pbs1", table, runner, password or self.password, NODE, self.tmp / "pbs-cache")

    def client(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The stand-in run directly, with the environment the target would give it."""
        base = {"PATH": os.environ["PATH"], "SMBGW_TEST_PBS_STORE": str(self.store),
                "PBS_PASSWORD_FILE": str(self.password), "PBS_FINGERPRINT": FINGERPRINT}
        for key, value in env.items():
            if value == "":
                base.pop(key, None)
            else:
                base[key] = value
        return subprocess.run([sys.executable, str(STANDIN), *argv], env=base, capture_output=True, text=True,
                              check=False, timeout=30)


@pytest.fixture
def pbs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pbs]:
    store = tmp_path / "pbs-server"
    (store / "store1" / "ns" / "pve1").mkdir(parents=True)
    (store / ".password").write_text(PBS_SECRET + "\n")
    (store / ".fingerprint").write_text(FINGERPRINT + "\n")
    setup = Pbs(tmp_path, store, tmp_path / "pbs-bin", secret_file(tmp_path / "secrets" / "pbs1", PBS_SECRET))
    setup.install()
    monkeypatch.setenv("PATH", f"{setup.bin}:{os.environ['PATH']}")
    yield setup


def test_pbs_backs_up_lists_restores_and_prunes(tmp_path: Path, pbs: Pbs, runner: RecordingRunner) -> None:
    first, second = snapshot_pair(tmp_path)
    target = pbs.target(runner)
    assert target.kind == "pbs" and target.snapshots("Team Docs", 30) == []
    one = target.backup("Team Docs", first, first.name, T1, 60)
    assert one == RemoteSnapshot("host/smbgw-team_20docs/2026-12-01T03:00:00Z", T1, first.name)
    two = target.backup("Team Docs", second, second.name, T2, 60)
    assert (pbs.store / "store1" / "ns" / "pve1" / "host" / "smbgw-team_20docs" / "2026-12-02T03:00:00Z").is_dir()
    assert target.snapshots("team docs", 30) == [one, two]
    assert runner.calls[-1][0][1:] == ("snapshot", "list", "host/smbgw-team_20docs", "--output-format", "json",
                                       "--repository", "smbgw@pbs!agent@pbs1.example:store1", "--ns", "pve1")

    assert_restores(target, "Team Docs", (one, first), (two, second), "no/such/file", tmp_path)

    target.backup("Team Docs", second, "smbgw-2026.12.03-03.00.00", T3, 60)
    target.forget("Team Docs", {"last": 1}, 60)
    assert [s.snapshot for s in target.snapshots("Team Docs", 30)] == ["smbgw-2026.12.03-03.00.00"]
    prune_argv = next(argv for argv, _env, _r in runner.calls if argv[1] == "prune")
    assert prune_argv[1:] == ("prune", "host/smbgw-team_20docs", "--keep-last", "1", "--output-format", "json",
                              "--repository", "smbgw@pbs!agent@pbs1.example:store1", "--ns", "pve1")

    for argv, env, _result in runner.calls:
        assert PBS_SECRET not in " ".join(argv)
        assert set(env) == PBS_ENV and env["PBS_PASSWORD_FILE"] == str(pbs.password)
        assert all(PBS_SECRET not in value for value in env.values())


def test_pbs_backup_argv_is_the_documented_one(tmp_path: Path, pbs: Pbs, runner: RecordingRunner) -> None:
    first, _second = snapshot_pair(tmp_path)
    pbs.target(runner).backup("Finance", first, first.name, T1, 60)
    assert runner.calls[0][0][1:] == (
        "backup", f"share.pxar:{first}", "--repository", "smbgw@pbs!agent@pbs1.example:store1", "--ns", "pve1",
        "--backup-type", "host", "--backup-id", "smbgw-finance", "--backup-time", str(int(T1.timestamp())))
    with pytest.raises(TargetError) as caught:  # PBS keeps only the time: the name must be made from it
        pbs.target(runner).backup("Finance", first, "smbgw-2026.12.09-00.00.00", T2, 60)
    assert caught.value.reason == "mismatch"


def test_pbs_restore_of_files_with_a_client_before_3_3_restores_everything(
        tmp_path: Path, pbs: Pbs, runner: RecordingRunner) -> None:
    first, _second = snapshot_pair(tmp_path)
    target = pbs.target(runner)
    one = target.backup("Finance", first, first.name, T1, 60)
    pbs.install(SMBGW_TEST_PBS_CLIENT_VERSION="3.2.4")
    restored = target.restore("Finance", one, ["top.txt"], tmp_path, 60)
    assert (restored / "top.txt").read_bytes() == b"top\n"
    assert tree(restored) == tree(first)
    assert [argv.count("--pattern") for argv, _e, _r in runner.calls if argv[1] == "restore"] == [1, 0]


@pytest.mark.parametrize(("argv", "env", "complaint"), [
    (["backup", "share.pxar:{src}", "--repository", "r:store1", "--backupid", "x"], {},
     "'backupid': schema does not allow additional properties"),
    (["backup", "share.pxar:{src}", "--repository", "r:store1", "--backup-type", "share"], {},
     "'backup-type': value is not defined in the enumeration"),
    (["backup", "share.pxar:{src}", "--repository", "r:store1", "--backup-time", "0"], {}, "minimum value of 1"),
    (["backup", "share.pxar:{src}", "--repository", "r:store1", "--backup-id", "smbgw finance"], {},
     "'backup-id': value does not match"),
    (["backup", "share-x.tar:{src}", "--repository", "r:store1"], {}, "unable to parse backup source"),
    (["backup", "--repository", "r:store1"], {}, "'backupspec': parameter is missing"),
    (["backup", "share.pxar:{src}", "--repository", "r:store1", "--ns", "a b"], {}, "'ns': value does not match"),
    (["backup", "share.pxar:{src}", "--repository", "r:store1", "--ns", "nope"], {}, "namespace 'nope' not found"),
    (["backup", "share.pxar:{src}", "--repository", "no spaces:store1"], {}, "'repository': value does not match"),
    (["backup", "share.pxar:{src}", "--repository", "r:store1", "--password", PBS_SECRET], {},
     "'password': schema does not allow additional properties"),
    (["backup", "share.pxar:{src}", "--repository", "r:store1", "--backup-id", PBS_SECRET], {},
     "password appears on the command line"),
    (["snapshot", "list", "host/a", "host/b", "--repository", "r:store1"], {}, "got additional arguments"),
    (["snapshot", "list", "--repository", "r:store1", "--output-format", "yaml"], {}, "'output-format'"),
    (["snapshot", "lst", "--repository", "r:store1"], {}, "not implemented"),
    (["restore", "host/a/2026-12-01T03:00:00Z", "share.pxar", "--repository", "r:store1"], {},
     "'target': parameter is missing"),
    (["restore", "host/a/2026-12-01T03:00:00Z", "share.pxar", "/tmp/x", "--repository", "r:store1", "--pattern",
      "/a"], {"SMBGW_TEST_PBS_CLIENT_VERSION": "3.2.4"}, "'pattern': schema does not allow additional properties"),
    (["restore", "host/a/20261201", "share.pxar", "/tmp/x", "--repository", "r:store1"], {},
     "unable to parse backup snapshot path"),
    (["prune", "host/a", "--keep-daily", "0", "--repository", "r:store1"], {}, "minimum value of 1"),
    (["prune", "host/a", "--keep-days", "3", "--repository", "r:store1"], {}, "'keep-days': schema does not"),
    (["prune", "--keep-daily", "3", "--repository", "r:store1"], {}, "'group': parameter is missing"),
    (["forgett", "host/a"], {}, "no such command"),
    (["snapshot", "list", "--repository", "r:store1"], {"PBS_PASSWORD_FILE": "/nonexistent"},
     "unable to open file in ENV(PBS_PASSWORD_FILE)"),
    (["snapshot", "list", "--repository", "r:store1"], {"PBS_PASSWORD_FILE": ""}, "no password input mechanism"),
    (["snapshot", "list", "--repository", "r:store1"], {"PBS_PASSWORD": PBS_SECRET}, "PBS_PASSWORD is set"),
    (["snapshot", "list", "--repository", "r:store1"], {"PBS_FINGERPRINT": "AA:BB"}, "not a SHA-256"),
    (["snapshot", "list", "--repository", "r:store1"], {"PBS_FINGERPRINT": ":".join(["cd"] * 32)},
     "Certificate fingerprint was not confirmed"),
    (["snapshot", "list", "--repository", "r:store2"], {}, "datastore 'store2' does not exist"),
    (["snapshot", "list", "--output-format", "json"], {}, "unable to get (default) repository"),
])
def test_the_standin_refuses_what_the_real_client_refuses(tmp_path: Path, pbs: Pbs, argv: list[str],
                                                          env: dict[str, str], complaint: str) -> None:
    source = tmp_path / "src"
    source.mkdir()
    result = pbs.client(*(a.replace("{src}", str(source)) for a in argv), **env)
    assert result.returncode == 255, result
    assert complaint in result.stderr and result.stderr.startswith(("Error: ", "WARNING", "fingerprint")), result.stderr
    assert not (pbs.store / "store1" / "host").exists()


def test_the_standin_accepts_the_documented_forms(tmp_path: Path, pbs: Pbs) -> None:
    source = tmp_path / "src"
    write_tree(source, {"a.txt": b"a"})
    ok = pbs.client("backup", f"share.pxar:{source}", "--repository=r@pam@localhost:8007:store1", "-ns", "pve1",
                    "--backup-id", "x", "--backup-time", "1764558000", "--skip-lost-and-found")
    assert ok.returncode == 0, ok.stderr
    listed = pbs.client("snapshot", "list", "--ns", "pve1", "--output-format", "json", "--repository",
                        "r@pam@localhost:8007:store1")
    assert listed.returncode == 0 and '"backup-id":"x"' in listed.stdout
    again = pbs.client("backup", f"share.pxar:{source}", "--repository", "r@pam@localhost:8007:store1", "--ns",
                       "pve1", "--backup-id", "x", "--backup-time", "1764558000")
    assert again.returncode == 255 and "backup directory already exists." in again.stderr
    other = pbs.client("backup", f"share.pxar:{source}", "--repository", "someone@pbs@localhost:store1", "--ns",
                       "pve1", "--backup-id", "x", "--backup-time", "1764559000")
    assert other.returncode == 255 and "backup owner check failed" in other.stderr


def test_the_standin_prunes_like_pbs() -> None:
    """keep-last 1 + keep-daily 2 with two snapshots today and one yesterday: PBS keeps
    today's newest (last), skips today for daily, keeps yesterday's: the older one of
    today goes."""
    day = 86400
    base = int(datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp())
    snaps = [standin.Snapshot(Path(str(t)), t, True, False) for t in (base, base - 3600, base - day)]
    marks = {snap.time: mark for snap, mark in standin.compute_prune_info(snaps, {"last": 1, "daily": 2})}
    assert marks == {base: "keep", base - 3600: "remove", base - day: "keep"}
    unfinished = standin.Snapshot(Path("u"), base + 60, False, False)
    marks = {s.time: m for s, m in standin.compute_prune_info([*snaps, unfinished], {"last": 1})}
    assert marks[base + 60] == "keep-partial" and marks[base] == "keep" and marks[base - day] == "remove"


def test_pbs_failures_have_their_reasons(tmp_path: Path, pbs: Pbs, runner: RecordingRunner) -> None:
    first, _second = snapshot_pair(tmp_path)
    wrong = pbs.target(runner, secret_file(tmp_path / "secrets" / "wrong", "wrong-pbs-password"))
    with pytest.raises(TargetError) as caught:
        wrong.snapshots("Finance", 30)
    assert caught.value.reason == "password", caught.value
    assert "wrong-pbs-password" not in str(caught.value)
    with pytest.raises(TargetError) as caught:
        pbs.target(runner, fingerprint=":".join(["cd"] * 32)).snapshots("Finance", 30)
    assert caught.value.reason == "mismatch", caught.value
    for fault, reason, timeout in (("hang", "timeout", 0.5), ("fail", "failed", 30.0),
                                   ("garbage@snapshot", "garbage", 30.0), ("unreachable", "unreachable", 30.0)):
        pbs.install(SMBGW_TEST_PBS_FAULT=fault)
        started = time.monotonic()
        with pytest.raises(TargetError) as caught:
            pbs.target(runner).snapshots("Finance", timeout)
        assert caught.value.reason == reason, (fault, caught.value)
        assert time.monotonic() - started < 10
    pbs.install(SMBGW_TEST_PBS_FAULT="fail@backup")
    with pytest.raises(TargetError) as caught:
        pbs.target(runner).backup("Finance", first, first.name, T1, 30)
    assert caught.value.reason == "failed" and "500 Internal Server Error" in str(caught.value)


def test_pbs_client_not_installed_is_reason_tool_missing(tmp_path: Path, pbs: Pbs, runner: RecordingRunner,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(TargetError) as caught:
        pbs.target(runner).snapshots("Finance", 10)
    assert caught.value.reason == "tool_missing"


def test_pbs_snapshot_listing_parser() -> None:
    done = {"backup-type": "host", "backup-id": "smbgw-finance", "backup-time": int(T1.timestamp()),
            "files": [{"filename": "index.json.blob"}, {"filename": "share.pxar.didx"}], "protected": False}
    unfinished = dict(done, **{"backup-time": int(T2.timestamp()), "files": [{"filename": "share.pxar.didx"}]})
    other = dict(done, **{"backup-id": "smbgw-other"})
    got = parse_pbs_snapshots(json.dumps([unfinished, other, done]), "smbgw-finance")
    assert got == [RemoteSnapshot("host/smbgw-finance/2026-12-01T03:00:00Z", T1, "smbgw-2026.12.01-03.00.00")]
    for bad in ("not json", "{}", "[1]", json.dumps([dict(done, **{"backup-time": "yesterday"})]),
                json.dumps([dict(done, files=None)]), json.dumps([dict(done, **{"backup-time": True})])):
        with pytest.raises(TargetError) as caught:
            parse_pbs_snapshots(bad, "smbgw-finance")
        assert caught.value.reason == "garbage"


def test_backup_ids_are_pbs_ids_and_distinct() -> None:
    names = ["finance", "my share", "my_20share", "a_b", "a-b", "ärger", "x" * 80, "x" * 79 + "y", "日本"]
    ids = [backup_id(name) for name in names]
    assert ids[:4] == ["smbgw-finance", "smbgw-my_20share", "smbgw-my_5f20share", "smbgw-a_5fb"]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._\-]*", i) and len(i) <= 200 for i in ids)


@pytest.mark.parametrize("settings", [
    {"type": "tape", "repository": "x"},
    {"type": "restic"},
    {"type": "restic", "repository": "/r", "keep": {"dayly": 3}},
    {"type": "pbs", "repository": "not a repository"},
    {"type": "pbs", "repository": "pbs1:store1", "fingerprint": "AA:BB"},
    {"type": "pbs", "repository": "pbs1:store1", "namespace": "a b"},
])
def test_a_target_table_this_module_cannot_use_is_reason_config(tmp_path: Path, settings: dict[str, Any]) -> None:
    with pytest.raises(TargetError) as caught:
        make_target("t", settings, Runner(), tmp_path / "pw", NODE, tmp_path / "cache")
    assert caught.value.reason == "config"


def test_keep_rules_drop_zeros_and_refuse_nothing() -> None:
    assert keep_rules({"daily": 7, "last": 0, "weekly": 4}) == {"daily": 7, "weekly": 4}
    for bad in ({}, {"last": 0}, {"days": 1}, {"daily": -1}, {"daily": True}):
        with pytest.raises(TargetError):
            keep_rules(bad)


def test_a_local_restic_repository_is_mapped_under_the_sandbox_root(tmp_path: Path, password: Path) -> None:
    target = make_target("offsite", {"type": "restic", "repository": "/mnt/backup/restic"}, Runner(), password,
                         NODE, tmp_path / "cache", host=Paths.under(tmp_path).host)
    assert isinstance(target, ResticTarget) and target.repository == str(tmp_path / "mnt" / "backup" / "restic")
