"""The ad plugin's step inside a guest (plugins/ad/guest.py), against a scripted guest
shell: a guest without winbind is refused before anything is joined, a member is only
checked, a non-member is joined with the password on stdin (never in any argv), its
winbind restarted and the trust checked; the teardown leaves; the step's inputs change
with the password file and the realm."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest
from smbgw_plugins.ad import guest
from smbgw_plugins.ad.table import AdSettings, IdmapSettings

from smbgw_agent.effects.deadline import Deadline
from smbgw_agent.effects.runner import CommandError, Completed
from smbgw_agent.model.idranges import IdRange
from smbgw_agent.platform.jobs import JobProgress, JobRecord

PASSWORD = "Gst-91b2-Secret!"
SETTINGS = AdSettings("SMBGW.TEST", "SMBGW", "svc-join", IdmapSettings("rid", IdRange(2000000, 2999999)),
                      password_file="/etc/smbgw/secrets/ad-join")
NOT_JOINED = (255, "", "Join to domain is not valid: NT code 0xfffffff6\n")
JOINED = (0, "Join is OK\n", "")
NSS = (0, "passwd:         files winbind\ngroup:          files winbind\n", "")


class Shell:
    """A guest that answers by the first word(s) of each argv, from a script."""

    target = "lxc:9000"

    def __init__(self, answers: dict[str, list[tuple[int, str, str]] | tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], str | None, list[str]]] = []
        self.files: dict[str, str] = {}

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            stdin: str | None = None, secrets: Iterable[str] = (), env: dict[str, str] | None = None) -> Completed:
        argv = list(argv)
        self.calls.append((argv, stdin, list(secrets)))
        key = next(k for k in sorted(self.answers, key=len, reverse=True) if " ".join(argv).startswith(k))
        answer = self.answers[key]
        code, out, err = answer.pop(0) if isinstance(answer, list) else answer
        result = Completed(tuple(argv), code, out, err, 0.01)
        if check and code != 0:
            raise CommandError(f"{argv[0]} exit {code}", result)
        return result

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        self.files[path] = text


def progress() -> JobProgress:
    return JobProgress(JobRecord("lxc:test", "mode_lxc", ""), Deadline(60.0))


def host(tmp_path: Path) -> Callable[[str], Path]:
    secret = tmp_path / "etc/smbgw/secrets/ad-join"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    return lambda declared: tmp_path / declared.lstrip("/")


def answers(**more: list[tuple[int, str, str]] | tuple[int, str, str]) -> dict[str, list[tuple[int, str, str]]
                                                                                 | tuple[int, str, str]]:
    return {"winbindd --version": (0, "Version 4.17.12-Debian\n", ""), "grep": NSS,
            "date": (0, f"{time.time():.0f}\n", ""), "systemctl": (0, "", ""), "smbcontrol": (0, "", ""),
            **{k.replace("_", " "): v for k, v in more.items()}}


def test_a_guest_without_winbind_is_refused_before_any_join(tmp_path: Path) -> None:
    step = guest.join_step(SETTINGS, host(tmp_path))
    shell = Shell({**answers(), "winbindd --version": (127, "", "exec: winbindd: not found\n")})
    with pytest.raises(guest.GuestJoinError, match="has no winbindd: install winbind and libnss-winbind"):
        step.setup(shell, progress())
    assert len(shell.calls) == 1
    shell = Shell({**answers(), "grep": (1, "", "")})
    with pytest.raises(guest.GuestJoinError, match="does not name winbind for passwd and group"):
        step.setup(shell, progress())


def test_a_member_is_only_checked(tmp_path: Path) -> None:
    step = guest.join_step(SETTINGS, host(tmp_path))
    shell = Shell(answers(net=[(0, *JOINED[1:]), (0, *JOINED[1:])]))
    said = step.setup(shell, progress())
    assert said == "lxc:9000: already a member of SMBGW.TEST"
    assert not any("join" in argv for argv, _, _ in shell.calls if "testjoin" not in argv)
    assert shell.files["/etc/krb5.conf"].count("default_realm = SMBGW.TEST") == 1
    assert ["systemctl", "enable", "--now", "winbind"] in [argv for argv, _, _ in shell.calls]


def test_a_non_member_joins_with_the_password_on_stdin_only(tmp_path: Path) -> None:
    step = guest.join_step(SETTINGS, host(tmp_path))
    shell = Shell(answers(net=[NOT_JOINED, (0, "Using short domain name -- SMBGW\nJoined 'SMBGW-9000' to dns "
                                              "domain 'smbgw.test'\n", ""), JOINED]))
    said = step.setup(shell, progress())
    assert said == "lxc:9000: Joined 'SMBGW-9000' to dns domain 'smbgw.test'"
    (join,) = [(argv, stdin, secrets) for argv, stdin, secrets in shell.calls if "join" in argv]
    argv, stdin, secrets = join
    assert argv[:7] == ["net", "-s", "/etc/samba/smb.conf", "ads", "join", "-U", "svc-join"]
    assert stdin == PASSWORD + "\n" and secrets == [PASSWORD]
    assert all(PASSWORD not in " ".join(a) for a, _, _ in shell.calls), "never in an argv"
    order = [" ".join(a[-2:]) for a, _, _ in shell.calls]
    assert order.index("restart winbind") < order.index("--now winbind") < order.index("smbd reload-config")


def test_a_refused_join_says_so_and_the_trust_is_checked(tmp_path: Path) -> None:
    step = guest.join_step(SETTINGS, host(tmp_path))
    shell = Shell(answers(net=[NOT_JOINED, (255, "Failed to join domain: failed to lookup DC info for domain "
                                                 "'SMBGW.TEST' over rpc: The attempted logon is invalid.\n", "")]))
    with pytest.raises(guest.GuestJoinError, match=r"lxc:9000: net ads join failed: .*logon is invalid"):
        step.setup(shell, progress())
    (tmp_path / "etc/smbgw/secrets/ad-join").unlink()
    with pytest.raises(guest.GuestJoinError, match="the join password"):
        step.setup(Shell(answers(net=[NOT_JOINED])), progress())


def test_the_teardown_leaves_unless_there_is_nothing_to_leave(tmp_path: Path) -> None:
    step = guest.join_step(SETTINGS, host(tmp_path))
    assert step.teardown is not None
    shell = Shell(answers(net=[JOINED, (0, "Deleted account for 'SMBGW-9000' in realm 'SMBGW.TEST'\n", "")]))
    assert step.teardown(shell, progress()) == "lxc:9000: Deleted account for 'SMBGW-9000' in realm 'SMBGW.TEST'"
    assert shell.calls[-1][1] == PASSWORD + "\n"
    shell = Shell(answers(net=[NOT_JOINED]))
    assert step.teardown(shell, progress()) == "lxc:9000: not a member, nothing to leave"
    assert all(stdin is None for _, stdin, _ in shell.calls)


def test_the_inputs_change_with_the_password_file_and_the_realm(tmp_path: Path) -> None:
    where = host(tmp_path)
    first = guest.join_step(SETTINGS, where).inputs
    assert guest.join_step(SETTINGS, where).inputs == first
    assert guest.join_step(dataclasses.replace(SETTINGS, realm="OTHER.TEST"), where).inputs != first
    secret = tmp_path / "etc/smbgw/secrets/ad-join"
    secret.unlink()
    secret.write_text("another\n")
    secret.chmod(0o600)
    os.utime(secret, (1, 1))
    assert guest.join_step(SETTINGS, where).inputs != first


def test_the_check_asks_for_a_rejoin_only_on_the_domains_refusal_or_a_stopped_winbind(tmp_path: Path) -> None:
    check = guest.join_step(SETTINGS, host(tmp_path)).check
    assert check is not None
    refused = (255, "", "Join to domain is not valid: The name provided is not a properly formed account name.\n"
                        "NT_STATUS_LOGON_FAILURE\n")
    reason = check(Shell(answers(net=[refused])))
    assert reason is not None and "no longer accepts its machine account" in reason
    assert "no machine account" in str(check(Shell(answers(net=[NOT_JOINED]))))
    unreachable = (255, "", "Join to domain is not valid: NT_STATUS_IO_TIMEOUT\n")
    assert check(Shell(answers(net=[unreachable]))) is None, "a DC that does not answer is no evidence"
    assert check(Shell(answers(net=[(0, "something else\n", "")]))) is None, "garbage is no evidence"
    assert check(Shell(answers(net=[JOINED], systemctl=(0, "active\n", "")))) is None
    assert check(Shell(answers(net=[JOINED], systemctl=(3, "inactive\n", "")))) == "winbind is inactive"


@pytest.mark.parametrize("offset", [600, -90])
def test_a_guest_whose_clock_is_off_is_not_joined_and_its_check_says_why(tmp_path: Path, offset: int) -> None:
    shell = Shell(answers(date=(0, f"{time.time() + offset:.0f}\n", ""), net_ads_testjoin=NOT_JOINED))
    step = guest.join_step(SETTINGS, host(tmp_path))
    wanted = re.escape(f"clock is {offset:+d} s off the node's") + ".*time service"
    with pytest.raises(guest.GuestJoinError, match=wanted):
        step.setup(shell, progress())
    assert not any(argv[:3] == ["net", "ads", "join"] for argv, _stdin, _secrets in shell.calls)
    assert step.check is not None
    assert "clock is" in str(step.check(shell))


def test_a_clock_within_a_minute_or_an_unreadable_date_is_no_reason() -> None:
    assert guest._clock_problem(Shell(answers(date=(0, f"{time.time() + 30:.0f}\n", "")))) is None
    assert guest._clock_problem(Shell(answers(date=(0, "Thu Dec  3 12:00:00 UTC 2026\n", "")))) is None
    assert guest._clock_problem(Shell(answers(date=(1, "", "date: not found\n")))) is None


def test_a_guest_without_a_name_server_is_refused_before_any_join(tmp_path: Path) -> None:
    script = answers(net_ads_testjoin=NOT_JOINED)
    script["grep -E ^nameserver"] = (1, "", "")
    shell = Shell(script)
    with pytest.raises(guest.GuestJoinError, match=r"names no name server.*found through DNS"):
        guest.join_step(SETTINGS, host(tmp_path)).setup(shell, progress())
    assert not any(argv[:3] == ["net", "ads", "join"] for argv, _stdin, _secrets in shell.calls)
