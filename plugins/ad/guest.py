"""The domain inside a guest: a share's container is a member of the domain of its own.

A container serves its share with its own smbd, so domain users reach it only if that
smbd is a member server: its own machine account (the guest's `netbios name`, which its
mode plugin sets), its own winbindd, the same idmap configuration as the node (the
globals `render.global_parameters` gives the node), so that a domain user owns the same
uid inside and on the host, where the files are. The guest's mode plugin passes those
ranges through its id map unshifted (`smbgw_guest_id_ranges`).

The step (`join_step`) runs in the mode plugin's job, after the guest started with its
smb.conf written:

1. the guest must have winbindd and the winbind NSS module (`passwd:` and `group:` name
   winbind in /etc/nsswitch.conf, as Debian's libnss-winbind writes it): without them
   domain users cannot be resolved to uids, and a join would only leave a machine account
   behind; and a name server in /etc/resolv.conf, or no DC can be found;
2. /etc/krb5.conf as on the node, unless `manage_krb5_conf = false`;
3. `net ads testjoin`: a guest whose account works is not joined again;
4. otherwise `net ads join`, password on stdin (`tool.join`: never in argv, redacted),
   then winbind restarted so it reads the new secrets;
5. winbind enabled and running, smbd reloaded, and the trust checked once more.

Its check, every `health_interval` in each running guest, finds an account the domain
refuses (deleted, or its password reset), no account, or winbind not running: the step
runs again (a rejoin), at most once per `rejoin_min_interval` as on the node.

Its teardown, before the mode plugin destroys the guest, is `net ads leave`: the
guest's account would otherwise stay in the directory with nobody to use it.

A container shares the node's kernel and so its clock; a VM keeps its own. The node's
clock is checked against the DC's (health.py); the guest's is checked against the
node's, before a join and by the check: beyond `SKEW_WARNING` the join is refused with
what to do (a time service in the template), as Kerberos would refuse the guest's
tickets at five minutes anyway, with a less helpful message.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from smbgw_agent.effects.runner import CommandError
from smbgw_agent.effects.secretfile import SecretFileError, read_secret
from smbgw_agent.platform.guests import GuestShell, GuestStep
from smbgw_agent.platform.jobs import JobProgress

from . import render, tool
from .checks import SKEW_WARNING
from .join import join_inputs
from .table import AdSettings

STEP = "ad:join"
GUEST_SMB_CONF = Path("/etc/samba/smb.conf")
NSSWITCH = "/etc/nsswitch.conf"
RESOLV_CONF = "/etc/resolv.conf"
TRUST_WAIT = 30.0  # winbindd takes a few seconds after a restart to find a DC


class GuestJoinError(RuntimeError):
    """The guest could not be made (or checked to be) a member."""


def _check_tools(shell: GuestShell) -> None:
    found = shell.run(["winbindd", "--version"], timeout=30, check=False)
    if found.returncode != 0:
        raise GuestJoinError(f"{shell.target} has no winbindd: install winbind and libnss-winbind in its template "
                             "(smbd needs winbind to serve domain users)")
    nss = shell.run(["grep", "-E", r"^(passwd|group):.*\bwinbind\b", NSSWITCH], timeout=30, check=False)
    if len(nss.stdout.splitlines()) < 2:
        raise GuestJoinError(f"{shell.target}'s {NSSWITCH} does not name winbind for passwd and group: install "
                             "libnss-winbind in its template (Debian's package adds it there)")
    resolver = shell.run(["grep", "-E", r"^nameserver[[:space:]]", RESOLV_CONF], timeout=30, check=False)
    if not resolver.stdout.strip():
        raise GuestJoinError(f"{shell.target}'s {RESOLV_CONF} names no name server: the domain's DCs are found "
                             "through DNS. A container copies the node's; a VM takes what cloud-init gives it, which "
                             "its template must apply (resolvconf with ifupdown, or systemd-resolved)")


def _clock_offset(shell: GuestShell) -> float | None:
    """The guest's clock minus the node's, in seconds (to the round trip's precision);
    None when the guest's `date` says nothing usable."""
    before = time.time()
    said = shell.run(["date", "+%s"], timeout=30, check=False)
    after = time.time()
    try:
        guest = int(said.stdout.strip())
    except ValueError:
        return None
    return guest - (before + after) / 2 if said.returncode == 0 else None


def _clock_problem(shell: GuestShell) -> str | None:
    offset = _clock_offset(shell)
    if offset is None or abs(offset) <= SKEW_WARNING + 1:
        return None
    return (f"its clock is {offset:+.0f} s off the node's: Kerberos refuses a guest's tickets beyond 5 minutes; "
            "run a time service (systemd-timesyncd or chrony, with the domain's DCs as servers) in its template")


def _wait_trust(shell: GuestShell, progress: JobProgress) -> str:
    """`net ads testjoin` until it says the account works (winbindd and the DC's caches
    may take a moment after a join)."""
    deadline = time.monotonic() + TRUST_WAIT
    while True:
        checked = tool.testjoin(shell, GUEST_SMB_CONF)
        if not isinstance(checked, str) and checked.ok:
            return checked.said
        said = checked if isinstance(checked, str) else checked.said
        if time.monotonic() > deadline or progress.expired:
            raise GuestJoinError(f"{shell.target} joined, but its machine account does not work: {said}")
        time.sleep(1.0)


def _as_join_user(shell: GuestShell, settings: AdSettings, host: Callable[[str], Path],
                  action: Callable[[str], str]) -> str:
    """`action(password)` with the join password, its failures as GuestJoinError."""
    try:
        password = read_secret(settings.password_file, settings.credential, host, os.environ)
    except SecretFileError as exc:
        raise GuestJoinError(f"{shell.target}: the join password: {exc}") from None
    try:
        return action(password)
    except tool.JoinError as exc:
        raise GuestJoinError(f"{shell.target}: {exc}") from None


def _setup(settings: AdSettings, host: Callable[[str], Path]) -> Callable[[GuestShell, JobProgress], str]:
    def run(shell: GuestShell, progress: JobProgress) -> str:
        _check_tools(shell)
        clock = _clock_problem(shell)
        if clock:
            raise GuestJoinError(f"{shell.target}: {clock}")
        if settings.manage_krb5_conf:
            shell.write_file("/etc/krb5.conf", render.krb5_conf(settings))
        progress.report(f"{shell.target}: checking its membership of {settings.realm}")
        checked = tool.testjoin(shell, GUEST_SMB_CONF)
        joined = not isinstance(checked, str) and checked.ok
        if joined:
            said = f"already a member of {settings.realm}"
        else:
            progress.report(f"{shell.target}: joining {settings.realm} as {settings.join_user}")
            said = _as_join_user(shell, settings, host,
                                 lambda password: tool.join(shell, GUEST_SMB_CONF, settings, password))
        try:
            if not joined:
                shell.run(["systemctl", "restart", "winbind"], timeout=60)  # it reads the new secrets
            shell.run(["systemctl", "enable", "--now", "winbind"], timeout=60)
            shell.run(["smbcontrol", "smbd", "reload-config"], timeout=30)
        except CommandError as exc:
            raise GuestJoinError(f"{shell.target}: {exc}") from None
        _wait_trust(shell, progress)
        return f"{shell.target}: {said}"

    return run


def _teardown(settings: AdSettings, host: Callable[[str], Path]) -> Callable[[GuestShell, JobProgress], str]:
    def run(shell: GuestShell, progress: JobProgress) -> str:
        checked = tool.testjoin(shell, GUEST_SMB_CONF)
        if not isinstance(checked, str) and checked.unjoined:
            return f"{shell.target}: not a member, nothing to leave"
        progress.report(f"{shell.target}: leaving {settings.realm}")
        said = _as_join_user(shell, settings, host,
                             lambda password: tool.leave(shell, GUEST_SMB_CONF, settings.join_user, password))
        return f"{shell.target}: {said}"

    return run


def _check(shell: GuestShell) -> str | None:
    """Between jobs: the guest's membership as `net ads testjoin` sees it, and winbind.
    Only the DC's refusal of the account, or no account at all, is a reason to join again
    (as on the node: a DC that does not answer is no evidence of a broken trust)."""
    clock = _clock_problem(shell)
    if clock:
        return clock
    checked = tool.testjoin(shell, GUEST_SMB_CONF)
    if isinstance(checked, str):
        return None
    if checked.refused:
        return f"the domain no longer accepts its machine account ({checked.said})"
    if checked.unjoined:
        return f"it has no machine account ({checked.said})"
    if not checked.ok:
        return None
    active = shell.run(["systemctl", "is-active", "winbind"], timeout=30, check=False).stdout.strip()
    return None if active == "active" else f"winbind is {active or 'not running'}"


def join_step(settings: AdSettings, host: Callable[[str], Path]) -> GuestStep:
    """The guest's membership as a step: its inputs are the join's (password file's
    identity, realm, account, ...) and the krb5.conf written, so a change of any runs it
    again; a member guest then only checks."""
    krb5 = render.krb5_conf(settings) if settings.manage_krb5_conf else ""
    inputs = hashlib.sha256(f"{join_inputs(settings, host, os.environ)}\0{krb5}".encode()).hexdigest()[:32]
    return GuestStep(STEP, inputs, _setup(settings, host), _teardown(settings, host),
                     what=f"make it a member of {settings.realm} (net ads join as {settings.join_user})",
                     check=_check, check_interval=settings.health_interval,
                     repair_min_interval=settings.rejoin_min_interval)
