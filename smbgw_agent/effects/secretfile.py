"""Password files and systemd credentials, checked before a tool is pointed at them.

Plugins that authenticate somewhere (an off-host backup repository, an AD join) take
their password from a root-only file or from a systemd credential of the agent's unit
(`LoadCredential=`, in $CREDENTIALS_DIRECTORY). The tools themselves would happily read a
password anyone can read or replace, so the file is checked first: a symbolic link (it
could be pointed elsewhere later), anything but a regular file, a file group- or
other-readable or -writable, one owned by someone other than root or the agent, an empty
one and a huge one are refused, each with what to do about it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

MAX_PASSWORD_FILE = 64 << 10
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.-]{1,255}")


class SecretFileError(ValueError):
    """The password file or credential cannot be used; the message says why and how to fix it."""


def secret_path(password_file: str | None, credential: str | None, host: Callable[[str], Path],
                environ: Mapping[str, str]) -> Path:
    """The checked path of a password: `password_file` (as configured, an absolute path
    mapped by `host`, i.e. `Paths.host`), or the systemd credential `credential`.
    Exactly one must be given. The content is read only to see that its first line is
    not empty; it is kept nowhere."""
    path, shown = _locate(password_file, credential, host, environ)
    try:
        fd = _open_checked(path, shown)
        try:
            empty = not os.read(fd, MAX_PASSWORD_FILE).split(b"\n", 1)[0].strip()
        finally:
            os.close(fd)
    except OSError as exc:
        raise SecretFileError(f"{shown}: cannot read it: {exc.strerror}") from None
    if empty:
        raise SecretFileError(f"{shown}: its first line is empty (the password is its first line)")
    return path


def read_secret(password_file: str | None, credential: str | None, host: Callable[[str], Path],
                environ: Mapping[str, str]) -> str:
    """The password itself: the first line of the checked file, without its line end.
    For tools that take it on stdin; the caller hands it to the runner as a secret so
    that it is redacted from anything logged."""
    path, shown = _locate(password_file, credential, host, environ)
    try:
        fd = _open_checked(path, shown)
        try:
            data = os.read(fd, MAX_PASSWORD_FILE)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SecretFileError(f"{shown}: cannot read it: {exc.strerror}") from None
    line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if not line.strip():
        raise SecretFileError(f"{shown}: its first line is empty (the password is its first line)")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{shown}: its first line is not UTF-8 text") from None


def _locate(password_file: str | None, credential: str | None, host: Callable[[str], Path],
            environ: Mapping[str, str]) -> tuple[Path, str]:
    if (password_file is None) == (credential is None):
        raise SecretFileError("give exactly one of password_file and credential")
    if credential is not None:
        if not _CREDENTIAL.fullmatch(credential) or credential in (".", ".."):
            raise SecretFileError(f"{credential!r} is not a credential name")
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretFileError(f"credential {credential!r}: $CREDENTIALS_DIRECTORY is not set (give the unit "
                                  f"LoadCredential={credential}:/path/to/file)")
        return Path(directory) / credential, f"credential {credential!r} ({Path(directory) / credential})"
    assert password_file is not None
    try:
        return host(password_file), f"password_file {password_file}"
    except ValueError as exc:
        raise SecretFileError(f"password_file {password_file!r}: {exc}") from exc


def _open_checked(path: Path, shown: str) -> int:
    """An fd of `path` once it passed every check (checked again on the open file, so a
    file swapped between the look and the open is not read)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise SecretFileError(f"{shown} does not exist") from None
    except OSError as exc:
        raise SecretFileError(f"{shown}: cannot read it: {exc.strerror}") from None
    _check(info, shown)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise SecretFileError(f"{shown} changed while it was read; try again")
        _check(opened, shown)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(info: os.stat_result, shown: str) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise SecretFileError(f"{shown} is a symbolic link; give the file itself")
    if stat.S_ISDIR(info.st_mode):
        raise SecretFileError(f"{shown} is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise SecretFileError(f"{shown} is not a regular file")
    if info.st_mode & 0o077:
        raise SecretFileError(f"{shown} has mode {stat.S_IMODE(info.st_mode):04o}: others can read or change it; "
                              f"chmod 0600 it")
    if info.st_uid not in (0, os.geteuid()):
        raise SecretFileError(f"{shown} is owned by uid {info.st_uid}, not by root or the agent")
    if info.st_size == 0:
        raise SecretFileError(f"{shown} is empty")
    if info.st_size > MAX_PASSWORD_FILE:
        raise SecretFileError(f"{shown} is {info.st_size} bytes, not a password file")


def secret_signature(password_file: str | None, credential: str | None, host: Callable[[str], Path],
                     environ: Mapping[str, str]) -> str | None:
    """Something that changes when the password file is replaced or rewritten (inode,
    size, modification time), without reading it: a join refused for a wrong password is
    retried as soon as this changes. None when the file cannot be looked at."""
    try:
        path, _shown = _locate(password_file, credential, host, environ)
        info = os.stat(path)
    except (SecretFileError, OSError):
        return None
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"
