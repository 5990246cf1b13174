"""An Active Directory domain for tests: a Samba AD DC, a member node, a client.

The shape (built like the CTDB cluster of ``tests/support/cluster.py``, whose helpers it
uses; every piece the test's own, nothing in the host's root namespace)::

    dc1    (netns ...dc, eth0 10.213.44.10) --veth-- dc \
    fs1    (netns ...fs, eth0 10.213.44.11) --veth-- fs  +-- br0 in netns ...sw (the "switch")
    client (netns ...c,  eth0 10.213.44.50) --veth-- c  /

* ``dc1`` is a booted systemd container running ``samba-ad-dc``: realm SMBGW.TEST, domain
  SMBGW, Administrator's password :data:`ADMIN_PASSWORD`, users alice and carol
  (:data:`USER_PASSWORD`), the group Finance holding alice. smbd, nmbd and winbind are
  masked there and it has no smb.conf but the one provisioning writes.
* ``fs1`` (the member) is a booted systemd container with the project's .deb installed
  as the cluster harness installs it on its nodes (:func:`debpkg.install_deb`), its DNS
  pointing at the DC and a krb5.conf for the realm; it is not joined: a test writes its
  smb.conf (:func:`member_smb_conf`) and joins it (:meth:`AdLab.join`). samba-ad-dc and
  nmbd are masked there; winbind is installed but not enabled (``systemctl start winbind``).
* the client namespace runs host tools (``smbclient``) against fs1, with a krb5.conf of
  its own (KRB5_CONFIG) naming the DC as the realm's KDC.

One image serves both roles (:func:`lab_image`: the .deb's container packages, then
:data:`AD_PACKAGES` by apt; built once and cached by content like every image; bookworm
and trixie). Provisioning the DC (5-11 s here) and its first start are done once too:
the provisioned DC's overlay upper layer is saved as a tar (with xattrs and ACLs) next to
the images, keyed by the image and everything that shapes the domain
(:func:`saved_dc_path`), and later labs boot a provisioned DC from it: unpacked in 0.1 s,
LDAP answering ~2.5 s after the start.

The DC is ready when its LDAP server answers (``ldbsearch`` of the rootDSE): its DNS
answers some seconds earlier, while the TLS key is still generated, and a join then fails.

The network, the names, the cgroups and the teardown are the cluster's
(:func:`cluster.segment`): names carry the test process's pid and a random tag, what a
killed run left behind is removed at the start, and everything of this run when the
``with`` block ends, however it ends. After ``stop_dc``/``start_dc``, Samba 4.17's `net ads`
on the member keeps skipping the DC for up to 60 s after its last failure (gencache's
NEG_CONN_CACHE; 4.22: ~7 s): wait for what you need, or ``net cache flush`` on the member.

    with ad_lab(release="bookworm") as lab:
        lab.member.write_file("/etc/samba/smb.conf", member_smb_conf(SHARE))
        lab.join()
        lab.start_member_services()
        lab.smbclient("data", "SMBGW\\\\alice", USER_PASSWORD, "ls", kerberos=True)

``python -m tests.support.adlab capture RELEASE`` captures what ``net ads info --json``,
``net ads testjoin``, ``wbinfo --ping-dc`` and ``dig`` print on the member in the states
the agent's checks tell apart, into tests/unit/fixtures/ad/RELEASE/ (see :func:`capture`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import debpkg, nspawn
from tests.support.cluster import (
    ClusterError,
    in_namespace,
    in_parallel,
    mac_for,
    missing_requirements,
    segment,
    wait_for,
)
from tests.support.nspawn import SystemdContainer

# The image: the .deb's container packages (debootstrap), then the DC's and the member's
# (apt-get in the image: debootstrap's own ordering fails to configure python3-cryptography
# on trixie). Cached by content like every image (both lists are in its name).
AD_PACKAGES: tuple[str, ...] = (
    "samba-ad-dc", "samba-ad-provision", "samba-dsdb-modules", "samba-vfs-modules", "winbind", "libnss-winbind",
    "libpam-winbind", "krb5-user", "smbclient", "bind9-dnsutils", "ldb-tools", "faketime",
)
NETNS_PREFIX = "smbgwad"
SUBNET = "10.213.44"  # no other test uses it (grep tests for the prefix before changing it)
DC_HOST, MEMBER_HOST, CLIENT_HOST = 10, 11, 50
REALM = "SMBGW.TEST"
DOMAIN = "SMBGW"
DNS_DOMAIN = REALM.lower()
ADMIN_PASSWORD = "Adm1nPassw0rd!"
USER_PASSWORD = "Passw0rd!"
USERS: tuple[str, ...] = ("alice", "carol")
GROUPS: Mapping[str, tuple[str, ...]] = {"Finance": ("alice",)}
# Bump whenever provisioning changes in a way the key below does not see.
DC_LAYER_VERSION = "1"
SAVED_DC_DIR = nspawn.MACHINES_DIR
SAMBA_ENV = ("env", "LANG=C", "LC_ALL=C", "KRB5CCNAME=MEMORY:adlab")  # as the agent runs Samba's tools
_TAR_OPTIONS = ("--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner")
_UNITS = "/etc/systemd/system"


class AdLabError(ClusterError):
    """The lab could not be built, or a host in it did not answer as it should."""


@dataclass(eq=False)
class LabHost:
    """A container in the lab: ``run`` executes inside it (all its namespaces)."""

    name: str  # its host name: dc1, fs1
    address: str
    namespace: str
    container: SystemdContainer

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{DNS_DOMAIN}"

    def run(self, *argv: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.container.run(list(argv), check=check, timeout=timeout, input=input)

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        self.container.write_file(path, data, mode)

    def read_file(self, path: str) -> str:
        return self.container.read_file(path)

    def journal(self, unit: str) -> str:
        """The unit's messages of this boot, one a line."""
        return self.run("journalctl", "--no-pager", "-b", "-o", "cat", "-u", unit, check=False).stdout


@dataclass
class AdLab:
    release: str
    tag: str
    switch: str
    client_namespace: str
    client_address: str
    dc: LabHost
    member: LabHost
    image: Path
    deb: Path
    workdir: Path
    client_env: dict[str, str]  # KRB5_CONFIG and KRB5CCNAME of the client's own
    client_smb_conf: Path  # the client's smb.conf (workgroup and realm), for smbclient -s
    timings: dict[str, float] = field(default_factory=dict)

    # -- the client ---------------------------------------------------------------------

    def client(self, *argv: str, check: bool = False, timeout: float = 60.0,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` (a host program) in the client namespace, output captured."""
        return in_namespace(self.client_namespace, *argv, check=check, timeout=timeout, input=input,
                            env=self.client_env)

    def smbclient(self, share: str, user: str, password: str, *commands: str, kerberos: bool = False,
                  timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The host's smbclient from the client namespace: ``//fs1.smbgw.test/SHARE`` at the
        member's address, NTLM or (``kerberos``) Kerberos only, with a ticket it gets itself
        from the DC for ``user`` and ``password``. With Kerberos, ``SMBGW\\alice`` is asked
        for as ``alice@SMBGW.TEST`` (smbclient would take the NetBIOS name for the realm)."""
        domain, _, name = user.rpartition("\\")
        if kerberos and domain.upper() == DOMAIN:
            user = f"{name}@{REALM}"
        argv = ["smbclient", "-s", str(self.client_smb_conf), f"//{self.member.fqdn}/{share}",
                "-I", self.member.address, "-U", f"{user}%{password}", "-m", "SMB3",
                f"--use-kerberos={'required' if kerberos else 'off'}", "-c", "; ".join(commands)]
        return self.client(*argv, timeout=timeout)

    # -- the DC ---------------------------------------------------------------------------

    def samba_tool(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``samba-tool ARGS`` on the DC (its local sam.ldb)."""
        return self.dc.run("samba-tool", *args, check=check, timeout=timeout)

    def dc_ready(self) -> bool:
        return _ldap_answers(self.dc)

    def stop_dc(self) -> None:
        self.dc.run("systemctl", "stop", "samba-ad-dc", timeout=90)

    def start_dc(self, timeout: float = 90.0) -> float:
        """Start samba-ad-dc on the DC; the seconds until its LDAP answers."""
        began = time.monotonic()
        self.dc.run("systemctl", "start", "samba-ad-dc", timeout=timeout)
        _wait_ldap(self.dc, timeout)
        return time.monotonic() - began

    # -- the member -----------------------------------------------------------------------

    def join(self, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``net ads join -U administrator`` on the member, the password on stdin (its
        smb.conf written first: :func:`member_smb_conf`)."""
        proc = self.member.run(*SAMBA_ENV, "net", "ads", "join", "-U", "administrator", check=False,
                               timeout=timeout, input=ADMIN_PASSWORD + "\n")
        if proc.returncode != 0:
            raise AdLabError(f"net ads join exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start_member_services(self, timeout: float = 60.0) -> float:
        """Start winbind and (re)start smbd on the member; the seconds until winbindd reaches
        the DC (``wbinfo --ping-dc``)."""
        began = time.monotonic()
        self.member.run("systemctl", "start", "winbind", timeout=timeout)
        self.member.run("systemctl", "restart", "smbd", timeout=timeout)
        wait_for("winbindd on the member reaching the DC",
                 lambda: self.member.run("wbinfo", "--ping-dc", check=False, timeout=30).returncode == 0,
                 timeout=timeout, interval=0.3)
        return time.monotonic() - began

    def member_journal(self, unit: str) -> str:
        return self.member.journal(unit)


def member_smb_conf(shares: str = "", extra_global: str = "") -> str:
    """A member's smb.conf as an administrator would write it (Samba's member-server
    setup), plus ``shares``."""
    return (
        "[global]\n"
        "\tsecurity = ADS\n"
        f"\trealm = {REALM}\n"
        f"\tworkgroup = {DOMAIN}\n"
        "\tkerberos method = secrets and keytab\n"
        "\tidmap config * : backend = tdb\n"
        "\tidmap config * : range = 3000-7999\n"
        f"\tidmap config {DOMAIN} : backend = rid\n"
        f"\tidmap config {DOMAIN} : range = 10000-999999\n"
        "\tdisable netbios = yes\n"
        f"{extra_global}"
        f"\n{shares}"
    )


def saved_dc_path(release: str) -> Path:
    """Where the provisioned DC's upper layer is kept: named after the image's key and
    a digest of everything that shapes the domain."""
    recipe = {"version": DC_LAYER_VERSION, "address": f"{SUBNET}.{DC_HOST}", "realm": REALM, "domain": DOMAIN,
              "admin": ADMIN_PASSWORD, "users": USERS, "password": USER_PASSWORD, "groups": GROUPS}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return SAVED_DC_DIR / f"smbgw-addc-{nspawn.image_key(debpkg.CONTAINER_PACKAGES, release, AD_PACKAGES)}-{digest}.tar"


def lab_image(release: str) -> Path:
    """The image of both roles for ``release``, built on first use."""
    return nspawn.ensure_base_image(debpkg.CONTAINER_PACKAGES, release, apt=AD_PACKAGES)


# --------------------------------------------------------------------------- building


def _ldap_answers(dc: LabHost) -> bool:
    proc = dc.run("ldbsearch", "-H", f"ldap://{dc.address}", "-b", "", "-s", "base", "dnsHostName",
                  check=False, timeout=20)
    return proc.returncode == 0 and "dnsHostName:" in proc.stdout


def _wait_ldap(dc: LabHost, timeout: float) -> None:
    wait_for("the DC's LDAP server", lambda: _ldap_answers(dc), timeout=timeout, interval=0.2)


def _base_files(name: str, nameserver: str | None) -> dict[str, str]:
    # No nameserver on the DC before provisioning: provision would make it the domain's
    # `dns forwarder`, which nothing here answers.
    address = f"{SUBNET}.{DC_HOST if name == 'dc1' else MEMBER_HOST}"
    return {
        "/etc/hostname": f"{name}\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost\n{address}\t{name}.{DNS_DOMAIN} {name}\n",
        "/etc/resolv.conf": f"search {DNS_DOMAIN}\n" + (f"nameserver {nameserver}\n" if nameserver else ""),
    }


def _member_files(dc: LabHost) -> dict[str, str]:
    return {
        **_base_files("fs1", dc.address),
        "/etc/krb5.conf": f"[libdefaults]\n\tdefault_realm = {REALM}\n\tdns_lookup_realm = false\n"
                          "\tdns_lookup_kdc = true\n",
    }


# The DC runs samba-ad-dc and nothing of the member's Samba: smbd and winbind masked
# (an empty unit file is a mask to systemd), nmbd is in the image; the image's mask of
# samba-ad-dc and its smb.conf removed (provisioning writes the DC's own).
_DC_MASKS = {f"{_UNITS}/{unit}": "" for unit in ("smbd.service", "winbind.service")}
_DC_REMOVED = (f"{_UNITS}/samba-ad-dc.service", "/etc/samba/smb.conf")
# The member: samba-ad-dc and nmbd stay masked as in the image; winbind is not enabled.
_MEMBER_REMOVED = (f"{_UNITS}/multi-user.target.wants/winbind.service",)


def _provision(dc: LabHost, timings: dict[str, float]) -> None:
    """Provision the domain on a fresh DC (samba not running), its users and group, then
    start samba-ad-dc (the first start makes its TLS key)."""
    began = time.monotonic()
    dc.run("samba-tool", "domain", "provision", f"--realm={REALM}", f"--domain={DOMAIN}", "--server-role=dc",
           "--dns-backend=SAMBA_INTERNAL", f"--adminpass={ADMIN_PASSWORD}", f"--host-ip={dc.address}",
           timeout=300)
    timings["DC: samba-tool domain provision"] = time.monotonic() - began
    # With no nameserver to copy, provision writes `dns forwarder = none`: no forwarder.
    dc.run("sed", "-i", "/^[[:space:]]*dns forwarder = none$/d", "/etc/samba/smb.conf")
    dc.run("cp", "/var/lib/samba/private/krb5.conf", "/etc/krb5.conf")
    dc.write_file("/etc/resolv.conf", f"search {DNS_DOMAIN}\nnameserver {dc.address}\n")
    # Else the saved DC's passwords expire 42 days after the layer was made.
    dc.run("samba-tool", "domain", "passwordsettings", "set", "--max-pwd-age=0", "--min-pwd-age=0")
    for user in USERS:
        dc.run("samba-tool", "user", "create", user, USER_PASSWORD)
    for group, members in GROUPS.items():
        dc.run("samba-tool", "group", "add", group)
        dc.run("samba-tool", "group", "addmembers", group, ",".join(members))
    dc.run("systemctl", "start", "samba-ad-dc", timeout=90)


def _save_dc(dc: LabHost, path: Path) -> None:
    """The DC's upper layer as a tar (samba-ad-dc stopped meanwhile, so its databases are
    at rest); written aside and renamed, so a half-written one is never used."""
    dc.run("systemctl", "stop", "samba-ad-dc", timeout=90)
    dc.run("sync")
    for left in path.parent.glob(f".{path.name}.*.partial"):  # of a killed run
        if not debpkg._pid_alive(int(left.name.rsplit(".", 2)[-2])):
            left.unlink(missing_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        subprocess.run(["tar", *_TAR_OPTIONS, "--exclude=./var/log/journal", "--exclude=./etc/machine-id",
                        "-C", str(dc.container.upper), "-cf", str(partial), "."],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
        os.rename(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    dc.run("systemctl", "start", "samba-ad-dc", timeout=90)


def _restore_dc(path: Path, into: Path) -> Path:
    disk = into / "dc-disk"
    disk.mkdir()
    subprocess.run(["tar", *_TAR_OPTIONS, "-C", str(disk), "-xpf", str(path)],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    return disk


def _check_booted(host: LabHost) -> None:
    failed = host.container.failed_units
    if failed:
        details = "\n".join(host.run("systemctl", "status", "--no-pager", "-l", unit, check=False).stdout
                            for unit in failed)
        raise AdLabError(f"{host.name} booted degraded: {failed}\n{details}")


@contextlib.contextmanager
def ad_lab(release: str = nspawn.SUITE, *, install_deb: bool = True, boot_timeout: float = 90.0,
           saved_dc: bool = True, verbose: bool = True) -> Iterator[AdLab]:
    """Build the network, boot dc1 and fs1 (in parallel) and yield the :class:`AdLab`.

    ``release``: the Debian release of both (bookworm, trixie). ``saved_dc``: boot the DC
    from its saved layer (made first if missing); without it the DC is provisioned anew.
    ``lab.timings`` holds what each phase took; with ``verbose`` they are printed too.
    """
    missing = missing_requirements() + [f"{tool} not found" for tool in debpkg.have_tools("tar", "smbclient")]
    if missing:
        raise AdLabError("cannot build the AD lab: " + "; ".join(missing))
    with segment(NETNS_PREFIX, SUBNET, lambda: lab_image(release), install_deb=install_deb, what="AD lab",
                 verbose=verbose) as seg:
        timings = seg.timings
        began = time.monotonic()
        for role, host in (("dc", DC_HOST), ("fs", MEMBER_HOST)):
            seg.add_host(role, f"{SUBNET}.{host}", mac_for(host))
        timings["network"] = time.monotonic() - began

        saved = saved_dc_path(release)
        restore = saved_dc and saved.is_file()
        began = time.monotonic()

        def start(name: str, role: str, host: int, files: Mapping[str, str], removed: tuple[str, ...],
                  disk: Path | None = None) -> LabHost:
            ns = f"{seg.tag}{role}"
            nspawn_args = [f"--network-namespace-path=/run/netns/{ns}", f"--hostname={name}", "--resolv-conf=off"]
            return LabHost(name, f"{SUBNET}.{host}", ns, seg.boot(role, files, nspawn_args, disk, removed))

        if restore:  # provisioned: its resolver is itself, its masks and removals are in the layer
            disk = _restore_dc(saved, seg.workdir)
            timings["DC: saved layer unpacked"] = time.monotonic() - began
            dc = start("dc1", "dc", DC_HOST, _base_files("dc1", f"{SUBNET}.{DC_HOST}"), (), disk)
        else:
            dc = start("dc1", "dc", DC_HOST, {**_base_files("dc1", None), **_DC_MASKS}, _DC_REMOVED)
        member = start("fs1", "fs", MEMBER_HOST, _member_files(dc), _MEMBER_REMOVED)

        def dc_job() -> float:
            dc.container.wait_until_running(boot_timeout)
            _check_booted(dc)
            if not restore:
                t0 = time.monotonic()
                _provision(dc, timings)
                _wait_ldap(dc, 90)
                timings["DC: provision, users, group, first start"] = time.monotonic() - t0
                if saved_dc:
                    t0 = time.monotonic()
                    _save_dc(dc, saved)
                    timings["DC: save layer, start again"] = time.monotonic() - t0
            _wait_ldap(dc, 90)
            return time.monotonic() - began

        def member_job() -> float:
            member.container.wait_until_running(boot_timeout)
            _check_booted(member)
            if install_deb:
                debpkg.install_deb(member.container, seg.deb)
            return time.monotonic() - began

        dc_seconds, member_seconds = in_parallel([dc_job, member_job])
        timings["DC booted and answering LDAP" + (" (saved layer)" if restore else "")] = dc_seconds
        timings["member booted" + (", .deb installed" if install_deb else "")] = member_seconds

        srv = member.run("dig", "+short", "+time=2", "+tries=3", f"@{dc.address}", "-t", "SRV",
                         f"_ldap._tcp.{DNS_DOMAIN}", check=False).stdout
        if f"389 {dc.fqdn}." not in srv:
            raise AdLabError(f"the DC's DNS does not answer the member for _ldap._tcp.{DNS_DOMAIN}: {srv!r}")

        client_krb5 = seg.workdir / "client-krb5.conf"
        client_krb5.write_text(
            f"[libdefaults]\n\tdefault_realm = {REALM}\n\tdns_lookup_realm = false\n\tdns_lookup_kdc = false\n"
            "\trdns = false\n\tdns_canonicalize_hostname = false\n"
            f"[realms]\n\t{REALM} = {{\n\t\tkdc = {dc.address}\n\t}}\n"
            f"[domain_realm]\n\t.{DNS_DOMAIN} = {REALM}\n\t{DNS_DOMAIN} = {REALM}\n")
        client_smb = seg.workdir / "client-smb.conf"
        client_smb.write_text(f"[global]\n\tworkgroup = {DOMAIN}\n\trealm = {REALM}\n\tdisable netbios = yes\n")
        client_env = {"KRB5_CONFIG": str(client_krb5), "KRB5CCNAME": f"FILE:{seg.workdir}/client.ccache"}
        lab = AdLab(release, seg.tag, seg.switch, seg.client, seg.client_address, dc, member, seg.image, seg.deb,
                    seg.workdir, client_env, client_smb, timings)
        timings["setup total"] = time.monotonic() - seg.started
        if verbose:
            print(f"\nAD lab ({release}) setup: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
                  flush=True)
        yield lab


# --------------------------------------------------------------------------- fixtures

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "ad"
TOOLS: Mapping[str, tuple[str, ...]] = {  # as plugins/ad/tool.py runs them (less its `-s smb.conf`)
    "info": ("net", "ads", "info", "--json"),
    "testjoin": ("net", "ads", "testjoin"),
    "ping-dc": ("wbinfo", "--ping-dc"),
    "dig": ("dig", "+short", "+time=3", "+tries=2", "-t", "SRV", f"_ldap._tcp.{DNS_DOMAIN}"),
}
SHARE = "[data]\n\tpath = /srv/data\n\tread only = no\n"


def capture(lab: AdLab, dest: Path, say: Callable[[str], None] = print) -> dict[str, float]:
    """Run the member's membership tools in six states and write what each printed to
    ``dest/<state>-<tool>.{stdout,stderr,rc}``; the seconds each took, by file stem.

    not-joined (smb.conf written, never joined), healthy (joined, winbind running),
    winbind-stopped, dc-stopped (samba-ad-dc stopped on the DC), dc-back (right after it
    answers LDAP again), machine-deleted (the member's computer account deleted on the
    DC, once every tool works again). The lab is used up afterwards."""
    dest.mkdir(parents=True, exist_ok=True)
    took: dict[str, float] = {}

    def take(state: str, *tools: str) -> None:
        for tool in tools:
            began = time.monotonic()
            proc = lab.member.run(*SAMBA_ENV, *TOOLS[tool], check=False, timeout=120)
            stem = f"{state}-{tool}"
            took[stem] = time.monotonic() - began
            for suffix, text in (("stdout", proc.stdout), ("stderr", proc.stderr), ("rc", f"{proc.returncode}\n")):
                (dest / f"{stem}.{suffix}").write_text(text)
            say(f"{stem}: exit {proc.returncode} in {took[stem]:.2f}s")

    lab.member.run("mkdir", "-p", "/srv/data")
    lab.member.write_file("/etc/samba/smb.conf", member_smb_conf(SHARE))
    take("not-joined", "testjoin", "info")
    began = time.monotonic()
    lab.join()
    took["join"] = time.monotonic() - began
    took["winbind started"] = lab.start_member_services()
    take("healthy", "info", "testjoin", "ping-dc", "dig")
    lab.member.run("systemctl", "stop", "winbind")
    take("winbind-stopped", "ping-dc")
    lab.start_member_services()
    lab.stop_dc()
    take("dc-stopped", "testjoin", "ping-dc", "info", "dig")
    took["DC started again"] = lab.start_dc()
    began = time.monotonic()
    take("dc-back", "testjoin", "info", "ping-dc")
    # The member remembers a DC it could not reach for a while (Samba's negative connection
    # cache): its tools keep failing some time after the DC answers again.
    pending = ["testjoin", "info", "ping-dc"]

    def all_back() -> bool:
        for tool in list(pending):
            if lab.member.run(*SAMBA_ENV, *TOOLS[tool], check=False, timeout=60).returncode == 0:
                took[f"{tool} OK again after the DC's start"] = time.monotonic() - began
                pending.remove(tool)
        return not pending

    wait_for("the member's tools to reach the DC again", all_back, timeout=180, interval=0.5)
    lab.samba_tool("computer", "delete", lab.member.name.upper())
    take("machine-deleted", "testjoin", "info")
    return took


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "capture":
        print("usage: python -m tests.support.adlab capture RELEASE", file=sys.stderr)
        return 2
    release = argv[1]
    with ad_lab(release=release) as lab:
        samba = lab.member.run("smbd", "--version").stdout.strip()
        took = capture(lab, FIXTURES / release)
    print(f"[{release}, {samba}] " + ", ".join(f"{k} {v:.2f}s" for k, v in took.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = [
    "ADMIN_PASSWORD",
    "AD_PACKAGES",
    "DNS_DOMAIN",
    "DOMAIN",
    "GROUPS",
    "REALM",
    "SUBNET",
    "USERS",
    "USER_PASSWORD",
    "AdLab",
    "AdLabError",
    "LabHost",
    "ad_lab",
    "capture",
    "lab_image",
    "member_smb_conf",
    "saved_dc_path",
]
