"""`smbgwctl import`: an administrator's existing smb.conf, read through the real
`testparm -s`, becomes share files; the agent serves them; and `testparm -s
--section-name X` of the agent's configuration shows every effective parameter the
original section had (the share's path under the sandbox's root), except those the
import said it left out. Compared both ways: a parameter the agent's section sets must
have the value the original had in effect, even where the original left it to Samba's
default (a share Samba serves read-only because it never says `read only`).

The smb.conf files are written by hand for this test in the styles administrators
arrive with:

- proxmox: a Proxmox VE host's vzdump and ISO shares;
- omv: OpenMediaVault's, with `force user`, quoted domain groups and `[homes]`;
- truenas: TrueNAS's, with `vfs objects` and a share name with a space;
- debian: a plain Debian one, with a guest share and a printer;
- synology: DSM's `key=value` style, a quoted comment, `invalid users`, `recycle:`;
- unraid: Unraid's, its shares in included files (`smb-names.conf`, `smb-extra.conf`,
  `smb-shares.conf`), so an `include` lands in a share as Samba reads it;
- univention: an AD member server (`security = ads`, idmap lines, share parameters in
  `[global]`), `admin users`, and an `include` inside a share;
- timemachine: a macOS Time Machine target, `fruit:` options, `vfs objects`;
- windows: a Windows file server migration, `hosts allow`/`hosts deny`, `inherit acls`,
  `map acl inherit`, `store dos attributes` in `[global]` and shares overriding them, a
  hidden `Name$` share;
- nextcloud: a web server's, `force user = www-data`, `force create mode`, `follow
  symlinks`;
- scanner: a scanner and fax drop box, `guest ok`/`guest only`, `root postexec`, a printer;
- homelab: case sensitivity (`case sensitive`, `preserve case`, `default case`,
  `mangled names`), Samba macros (`%h`, `%U`) in a comment, an option and a path;
- family: `copy =` of a template share, names with `&`, umlauts and CJK;
- ctdb: a CTDB cluster node's (`clustering = yes`, `vfs objects = fileid`, `preexec`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import Sandbox
from smbgw_agent.model.shares import forbidden_option
from tests.support.agent import REPO, AgentProcess, wait_served

pytestmark = pytest.mark.integration

CONFIGS = {
    "proxmox": """[global]
   workgroup = WORKGROUP
   server role = standalone server
   map to guest = never
[backups]
   comment = vzdump target
   path = /srv/smb/backups
   read only = no
   valid users = backup
   create mask = 0600
   directory mask = 0700
[iso]
   path = /srv/smb/iso
   browseable = yes
   read only = yes
""",
    "omv": """[global]
   workgroup = WORKGROUP
   server string = %h server
   log level = 1
   min protocol = SMB2
[Media]
   path = /srv/smb/media
   comment = Films and music
   browseable = yes
   writeable = yes
   valid users = "CORP\\Domain Users", @family
   create mask = 0664
   directory mask = 0775
   force user = media
   hide dot files = yes
   inherit permissions = yes
[homes]
   browseable = no
""",
    "truenas": """[global]
   server min protocol = SMB2_10
   server multi channel support = yes
[projects]
   path = /srv/smb/projects
   comment = Project data
   browsable = no
   read only = no
   ea support = yes
   strict sync = no
   access based share enum = yes
   nt acl support = yes
   vfs objects = streams_xattr zfsacl
[Team Docs]
   path = /srv/smb/team docs
   oplocks = no
   level2 oplocks = no
""",
    "debian": """[global]
   workgroup = HOME
[public]
   path = /srv/smb/public
   guest ok = yes
   read only = yes
[scans]
   path = /srv/smb/scans
   writable = yes
   valid users = scanner, @office
   veto files = /*.tmp/Thumbs.db/
   delete veto files = yes
[printers]
   printable = yes
   path = /var/spool/samba
""",
    "synology": """[global]
\tprintcap name=cups
\tload printers=no
\tsecurity=user
\tpassdb backend=smbpasswd
\tworkgroup=WORKGROUP
\tserver string=DiskStation
\tlocal master=no
\tmax protocol=SMB3
\tmin protocol=SMB2
\tunix charset=UTF8
\tdos charset=CP437
\tuse sendfile=yes
[homes]
\tcomment=user home
\tbrowseable=no
\twriteable=yes
\tvalid users=%S
[video]
\tinvalid users=nobody,nobody
\tvalid users=nobody,nobody,@administrators,@users
\tcomment="System default shared folder"
\tpath=/srv/smb/volume1/video
\tdirectory mask=0777
\tcreate mask=0777
\tvfs objects=fruit,streams_xattr,acl_xattr,catia,recycle
\twriteable=yes
\tbrowseable=yes
\tstrict allocate=yes
\thide unreadable=no
\trecycle:repository=#recycle
\trecycle:keeptree=yes
\trecycle:touch=no
[docker]
\tinvalid users=nobody,nobody
\tvalid users=nobody,nobody,@administrators
\tcomment=
\tpath=/srv/smb/volume1/docker
\tdirectory mask=0777
\tcreate mask=0777
\twriteable=yes
\tbrowseable=no
\tstrict allocate=yes
\thide unreadable=yes
\taccess based share enum=yes
\tacl_xattr:ignore system acls=yes
""",
    "unraid": """[global]
\t# configurable identification
\tinclude = @DIR@/smb-names.conf

\t# log stuff only to syslog
\tlogging = syslog@0

\t# we don't do printers
\tshow add printer wizard = No
\tdisable spoolss = Yes
\tload printers = No
\tprinting = bsd
\tprintcap name = /dev/null

\t# misc.
\tinvalid users = root
\tunix extensions = No
\twide links = Yes
\tuse sendfile = Yes
\taio read size = 0
\taio write size = 0
\tinherit permissions = Yes

\t# hook for user-defined samba config
\tinclude = @DIR@/smb-extra.conf

\t# auto-configured shares
\tinclude = @DIR@/smb-shares.conf
""",
    "univention": """[global]
\tsecurity = ads
\trealm = SCHULE.EXAMPLE.ORG
\tworkgroup = SCHULE
\tnetbios name = memberfs01
\tkerberos method = secrets and keytab
\tdedicated keytab file = /etc/krb5.keytab
\twinbind use default domain = yes
\twinbind refresh tickets = yes
\ttemplate shell = /bin/bash
\tidmap config * : backend = tdb
\tidmap config * : range = 3000-7999
\tidmap config SCHULE : backend = rid
\tidmap config SCHULE : range = 10000-999999
\tvfs objects = acl_xattr
\tmap acl inherit = yes
\tstore dos attributes = yes
\tusershare max shares = 0

[Verwaltung]
\tpath = /srv/smb/verwaltung
\tcomment = Verwaltung und Sekretariat
\twriteable = yes
\tbrowseable = yes
\tpublic = no
\tdos filemode = yes
\thide unreadable = yes
\tcreate mode = 0770
\tdirectory mode = 0770
\tcsc policy = manual
\thide files = /desktop.ini/$RECYCLE.BIN/
\tvalid users = @"SCHULE\\Verwaltung", @"SCHULE\\Domain Admins"
\twrite list = @"SCHULE\\Verwaltung"
\tadmin users = @"SCHULE\\Domain Admins"
\tinherit acls = yes
\tinclude = @DIR@/verwaltung.local.conf

[Lehrer]
\tpath = /srv/smb/lehrer
\tcomment = Material fuer Lehrkraefte
\twriteable = yes
\tvalid users = @"SCHULE\\Lehrer"
\tinherit owner = windows and unix
\tstrict locking = yes
\tveto oplock files = /*.mdb/*.accdb/
""",
    "timemachine": """[global]
\tworkgroup = WORKGROUP
\tserver string = backup-pi
\tserver min protocol = SMB2_10
\tmdns name = mdns
\tmulticast dns register = yes
\tfruit:metadata = stream
\tfruit:model = TimeCapsule8,119
\tfruit:veto_appledouble = no
\tfruit:nfs_aces = no
\tfruit:wipe_intentionally_left_blank_rfork = yes
\tfruit:delete_empty_adfiles = yes

[TimeMachine]
\tcomment = Time Machine backups
\tpath = /srv/smb/timemachine
\tvalid users = smbgwdemo, anna
\tread only = no
\tbrowseable = yes
\tvfs objects = catia fruit streams_xattr
\tfruit:time machine = yes
\tfruit:time machine max size = 2T
\tdurable handles = yes
\tkernel oplocks = no
\tkernel share modes = no
\tposix locking = no
\tea support = yes

[Mac Transfer]
\tpath = /srv/smb/transfer
\tread only = no
\tvfs objects = catia fruit streams_xattr
\tfruit:encoding = native
\tfruit:posix_rename = yes
\tcatia:mappings = 0x22:0xa8,0x2a:0xa4,0x2f:0xf8
""",
    "windows": """# Migrated from the old Windows Server 2012 file server (FS01), 2019
[global]
\tworkgroup = FIRMA
\tnetbios name = FS02
\tserver string = Dateiserver
\tserver role = standalone server
\tmap to guest = never
\tmap archive = no
\tmap hidden = no
\tmap system = no
\tstore dos attributes = yes
\tinherit acls = yes
\tmap acl inherit = yes
\tvfs objects = acl_xattr
\tacl_xattr:ignore system acls = yes
\thosts allow = 192.168.10. 127.
\thosts deny = 0.0.0.0/0

[Daten]
\tpath = /srv/smb/daten
\tread only = no
\tvalid users = @buero
\tinherit permissions = no
\tea support = yes
\tcase sensitive = no

[Buchhaltung$]
\tcomment = hidden: only accounting maps it as B:
\tpath = /srv/smb/buchhaltung
\tread only = no
\tbrowseable = no
\tvalid users = @buchhaltung, chef
\thosts allow = 192.168.10.20 192.168.10.21
\thosts deny = ALL
\taccess based share enum = yes
\tsmb encrypt = required

[Altdaten]
\tcomment = Archiv der alten Windows-Freigaben
\tpath = /srv/smb/altdaten
\tread only = yes
\tmap archive = yes
\tmap hidden = yes
\tmap readonly = permissions
\tinherit acls = no
\tdos filetimes = yes
\tdos filetime resolution = yes
""",
    "nextcloud": """[global]
\tworkgroup = WORKGROUP
\tserver string = web01 (Nextcloud)
\tsecurity = user
\tunix password sync = no
\tserver min protocol = SMB3
\tserver signing = mandatory

[nextcloud-data]
\tcomment = Nextcloud external storage
\tpath = /srv/smb/nextcloud/data
\tvalid users = ncsync
\tforce user = www-data
\tforce group = www-data
\tread only = no
\tbrowseable = no
\tcreate mask = 0660
\tforce create mode = 0660
\tdirectory mask = 0770
\tforce directory mode = 0770

[webroot]
\tcomment = Webseiten
\tpath = /srv/smb/www
\tread only = yes
\twrite list = @webdev
\tforce user = www-data
\tforce group = www-data
\tcreate mask = 0644
\tdirectory mask = 0755
\tforce create mode = 0644
\tforce directory mode = 0755
\tfollow symlinks = no
\thide dot files = no
\tveto files = /.git/.htpasswd/
""",
    "scanner": """[global]
\tworkgroup = OFFICE
\tserver string = Scan server
\tsecurity = user
\tmap to guest = bad user
\tguest account = nobody
\t# the old MFC only speaks SMB1
\tserver min protocol = NT1
\tntlm auth = yes
\tload printers = yes
\tprinting = cups
\tprintcap name = cups

[scans]
\tcomment = Scanner drop box
\tpath = /srv/smb/scans/inbox
\tguest ok = yes
\tguest only = yes
\tread only = no
\tcreate mask = 0666
\tdirectory mask = 0777
\tforce create mode = 0666
\thide files = /*.lck/
\troot postexec = /usr/local/bin/scan-notify %S %m

[fax-in]
\tpath = /srv/smb/fax
\tpublic = yes
\twritable = yes
\tonly guest = yes
\tbrowseable = no
\tcreate mode = 0644
\tveto files = /*.exe/*.com/*.bat/*.vbs/

[Brother_MFC]
\tcomment = Brother MFC-L2710DW
\tpath = /var/spool/samba
\tprintable = yes
\tguest ok = yes
\tprinter name = Brother_MFC
""",
    "homelab": """[global]
\tworkgroup = HOMELAB
\tserver string = Homelab NAS
\tserver min protocol = SMB3
\tunix extensions = no
\tdisable netbios = yes
\tsmb ports = 445
\tlog file = /var/log/samba/%m.log
\tmax log size = 500

[git]
\tcomment = bare repos, case matters
\tpath = /srv/smb/git
\tread only = no
\tvalid users = smbgwdemo
\tcase sensitive = yes
\tpreserve case = yes
\tshort preserve case = yes
\tdefault case = lower
\tmangled names = no

[dosgames]
\tcomment = DOSBox and old LAN games
\tpath = /srv/smb/dosgames
\tcase sensitive = no
\tpreserve case = no
\tshort preserve case = no
\tdefault case = upper
\tmangled names = yes
\tmangling char = _

[media]
\tcomment = Jellyfin library on %h
\tpath = /srv/smb/media
\tread only = yes
\twrite list = smbgwdemo
\tvfs objects = recycle
\trecycle:repository = .recycle/%U
\trecycle:keeptree = yes
\trecycle:versions = yes
\trecycle:exclude = *.tmp *.part

[private]
\tcomment = everyone's own folder
\tpath = /srv/smb/private/%U
\tvalid users = smbgwdemo anna
\tread only = no
""",
    "family": """[global]
\tworkgroup = FAMILIE
\tserver string = Familien-NAS
\tunix charset = UTF-8
\tdos charset = CP850
\tlog file = /var/log/samba/log.%m
\tmax log size = 1000
\tlogging = file
\tpanic action = /usr/share/samba/panic-action %d
\tobey pam restrictions = yes
\tunix password sync = yes
\tpasswd program = /usr/bin/passwd %u
\tpam password change = yes
\tusershare allow guests = no

# template for the shares below (copy = Vorlage)
[Vorlage]
\tpath = /srv/smb/vorlage
\tbrowseable = no
\tread only = no
\tvalid users = @familie
\tcreate mask = 0660
\tdirectory mask = 0770
\tveto files = /.DS_Store/Thumbs.db/desktop.ini/
\tdelete veto files = yes

[Fotos & Videos]
\tcopy = Vorlage
\tpath = /srv/smb/fotos
\tcomment = Urlaubsbilder und Handyvideos
\tbrowseable = yes

[Musik]
\tcopy = Vorlage
\tpath = /srv/smb/musik
\tbrowseable = yes
\tread only = yes
\twrite list = papa

[Schüler Ablage]
\tcopy = Vorlage
\tpath = /srv/smb/schule
\tcomment = Hausaufgaben für Lea und Jonas
\tvalid users = @familie, lea, jonas

[Café Ünïcødé 共有]
\tcopy = Musik
\tpath = /srv/smb/cafe
""",
    "ctdb": """[global]
\tclustering = yes
\tnetbios name = FILESRV
\tworkgroup = CLUSTER
\tsecurity = user
\tpassdb backend = tdbsam
\tctdbd socket = /var/run/ctdb/ctdbd.socket
\tctdb timeout = 10
\tidmap config * : backend = autorid
\tidmap config * : range = 1000000-1999999
\tfileid:algorithm = fsname_norootdir
\tkernel change notify = no

[projekte]
\tpath = /srv/smb/clusterfs/projekte
\tcomment = on the cluster file system
\tread only = no
\tvfs objects = fileid
\tfileid:algorithm = fsname_norootdir
\tkernel oplocks = no
\tkernel share modes = no
\tposix locking = no
\tstrict locking = no
\tsmb encrypt = desired
\tdurable handles = yes

[archiv]
\tpath = /srv/smb/clusterfs/archiv
\tread only = yes
\tvfs objects = fileid
\toplocks = no
\tlevel2 oplocks = no
\tpreexec = /usr/local/sbin/check-gpfs-mount %P
""",
}
# Files the configurations above include (`@DIR@` is the directory they are written to):
# testparm follows them, and so must the import.
INCLUDED = {
    "unraid": {
        "smb-names.conf": """\tnetbios name = Tower
\tserver string = Media server
\thide dot files = yes
\tmulticast dns register = No
\tdisable netbios = yes
\tserver min protocol = SMB2
\tsecurity = USER
\tworkgroup = WORKGROUP
\tmap to guest = Bad User
\tpassdb backend = smbpasswd
""",
        "smb-extra.conf": """# added by hand (Settings > SMB > SMB Extras)
[timecapsule]
\tpath = /srv/smb/user/timecapsule
\tcomment = Time Machine for the iMac
\tbrowseable = no
\tvalid users = anna
\twrite list = anna
\tvfs objects = catia fruit streams_xattr
\tfruit:time machine = yes
""",
        "smb-shares.conf": """[appdata]
\tpath = /srv/smb/user/appdata
\tcomment =
\tbrowseable = no
\t# Private
\twriteable = no
\tread list =
\twrite list = admin
\tvalid users = admin
\tcase sensitive = auto
\tpreserve case = yes
\tshort preserve case = yes
[isos]
\tpath = /srv/smb/user/isos
\tcomment = ISO images
\tbrowseable = yes
\t# Public
\tpublic = yes
\twriteable = yes
\tcase sensitive = auto
\tpreserve case = yes
\tshort preserve case = yes
\tvfs objects = catia fruit streams_xattr
\tfruit:encoding = native
[Media Library]
\tpath = /srv/smb/user/Media Library
\tcomment = movies and tv
\tbrowseable = yes
\t# Secure
\tpublic = no
\twriteable = no
\twrite list = anna,ben
\tcase sensitive = auto
""",
    },
    "univention": {
        "verwaltung.local.conf": """# local additions for [Verwaltung], kept out of the UCR-managed file
\tveto files = /*.exe/*.scr/
\tdelete veto files = yes
\tfake oplocks = no
""",
    },
}
AGENT_TOML = ('[agent]\nnode = "sandbox"\nallowed_roots = ["/srv"]\nallow_custom_options = true\n'
              'resync_interval = "60s"\n\n[metrics]\nenabled = false\n')


def section_of(conf: Path, name: str, verbose: bool = False) -> dict[str, str]:
    """What testparm prints for the section: the parameters it sets (those that differ from
    what [global] gives every share); for [global] with `verbose`, every share parameter's
    default as [global] makes it."""
    done = subprocess.run(["testparm", "-s", *(["-v"] if verbose else []), "--section-name", name, str(conf)],
                          capture_output=True, text=True, timeout=60, check=False)
    found = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep:
            found[key] = value
    return found


@pytest.mark.parametrize("style", sorted(CONFIGS))
def test_import_then_serve_keeps_the_effective_parameters(sandbox: Sandbox, tmp_path: Path, style: str) -> None:
    source = tmp_path / f"{style}.conf"
    for name, text in {**INCLUDED.get(style, {}), source.name: CONFIGS[style]}.items():
        (tmp_path / name).write_text(text.replace("@DIR@", str(tmp_path)))
    report = import_serve_and_compare(sandbox, source)
    print(f"\n[import] {style}: {sum(s['text'] is not None for s in report['shares'])} shares served with their "
          f"parameters; left out: {sum(len(s['left_out']) for s in report['shares'])}")


def import_serve_and_compare(sandbox: Sandbox, source: Path) -> dict[str, Any]:
    """`smbgwctl import --from source --to` the sandbox's shares directory, the agent serves
    every file, and each share's effective parameters are the same both ways (see the
    module's docstring). Returns import's JSON report."""
    (sandbox.root / "etc/smbgw/agent.toml").write_text(AGENT_TOML)
    done = subprocess.run([str(REPO / ".venv/bin/smbgwctl") if (REPO / ".venv/bin/smbgwctl").exists()
                           else "smbgwctl", "--root", str(sandbox.root), "import", "--from", str(source),
                           "--to", str(sandbox.shares_dir), "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    shares = [s for s in report["shares"] if s["text"] is not None]
    assert shares and len(report["written"]) == len(shares), report
    for share in shares:
        assert not share["problems"], share
    agent = AgentProcess(sandbox)
    agent.start()
    try:
        for share in shares:
            (sandbox.root / section_of(source, share["name"])["path"].lstrip("/")).mkdir(parents=True,
                                                                                            exist_ok=True)
        for share in shares:
            wait_served(agent, share["name"], timeout=30)
        # Each side's effective values: the section's own lines over what its [global] gives.
        # Compared: every parameter either side's section sets (the original's lines, and what
        # the agent wrote: a `read only` the original leaves to Samba's default included).
        defaults = section_of(source, "global", verbose=True), section_of(sandbox.smb_conf, "global", verbose=True)
        for share in shares:
            said = section_of(source, share["name"]), section_of(sandbox.smb_conf, share["name"])
            original, served = {**defaults[0], **said[0]}, {**defaults[1], **said[1]}
            left_out = {line.split(" = ", 1)[0] for line in share["left_out"]}
            # Skipped below only what a share file cannot hold: a parameter it may not set,
            # or a value with a Samba macro.
            for line in share["left_out"]:
                assert forbidden_option(line.split(" = ", 1)[0]) or "%" in line, (share["name"], line)
            # `include` says where Samba read lines from, not how the share behaves (an
            # `include` after a section is printed as that section's: the agent's list of
            # fragments gives each share the next one's).
            for key in sorted((said[0].keys() | said[1].keys()) - left_out - {"include"}):
                if key == "path":
                    assert served[key] == str(sandbox.root) + original[key], (key, served)
                else:
                    assert served.get(key) == original.get(key), (
                        f"[{share['name']}] {key}: served {served.get(key)!r}, original {original.get(key)!r}")
    finally:
        agent.stop()
    return report
