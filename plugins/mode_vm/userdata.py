"""The cloud-init user-data of a share's VM: what makes a clone of the template the
share's file server at its first boot, and the check that cloud-init accepts it.

Rendered with jinja2 from `templates/vm-user-data.yaml.j2`; every value goes through
`tojson`, so a share's name or path is a quoted YAML string whatever characters it holds
(YAML reads JSON strings), and smb.conf goes in base64. The user-data:

- names the host `smbgw-<share>`;
- mounts the directory mapping (virtiofs, tag = the mapping id) at the share's path, the
  path the share has on the host, so smb.conf is the same as a native share's;
- makes smbd require that mount (a systemd drop-in with `RequiresMountsFor`): a guest
  whose mount failed must not serve an empty directory on its own disk;
- writes smb.conf and restarts smbd.

What it never holds: passwords or NT hashes. A snippet is a file in a storage any
administrator with storage access can read (and `qm cloudinit dump` prints); the
share's users and a domain join reach the guest through the QEMU guest agent instead.

`check` runs `cloud-init schema --config-file` on the rendered text before the agent
uses it. Where the node has no `cloud-init` (Proxmox VE does not install it on hosts;
installing it there needs `/etc/cloud/cloud-init.disabled` first), the check is skipped
and said so in the job's progress and the log: the template below is the agent's own and
is tested against cloud-init's schema in the test suite.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from smbgw_agent.effects.runner import CommandError, Runner

CLOUD_INIT = "cloud-init"
SCHEMA_TIMEOUT = 60.0
# What `cloud-init schema --config-file` prints for a valid file: 22.4 (Debian 12) and later.
VALID = ("Valid cloud-config", "Valid schema")
_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("smbgw_plugins", "templates"),
    autoescape=False,  # noqa: S701 - YAML, not HTML: every value goes through tojson
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    # The templates ship with the package and change only with it: no stat of the
    # template file per render (10,000 of them in a cold start).
    auto_reload=False,
)


class UserDataError(ValueError):
    """cloud-init refuses the rendered user-data."""


@dataclass(frozen=True)
class UserData:
    share: str
    file: str
    node: str
    hostname: str
    mapping: str  # the directory mapping's id: virtiofs' mount tag
    path: str  # where the guest mounts it: the share's path
    smb_conf: str

    def render(self) -> str:
        dropin = f"# smbgw-agent: serve {self.share} only while its data is mounted\n[Unit]\n" \
                 f"RequiresMountsFor={self.path}\n"
        return _templates.get_template("vm-user-data.yaml.j2").render(
            share=self.share, file=self.file, node=self.node, hostname=self.hostname, mapping=self.mapping,
            path=self.path, smb_conf_b64=base64.b64encode(self.smb_conf.encode()).decode(), smbd_dropin=dropin)


def check(runner: Runner, text: str) -> str | None:
    """None when cloud-init accepts `text`; "unchecked: ..." when the node has no
    cloud-init to ask; raises UserDataError with cloud-init's words when it refuses."""
    if shutil.which(CLOUD_INIT) is None:
        return f"unchecked: this node has no {CLOUD_INIT} command"
    with tempfile.TemporaryDirectory(prefix="smbgw-vm-") as folder:
        candidate = Path(folder) / "user-data"
        candidate.write_text(text)
        try:
            result = runner.run([CLOUD_INIT, "schema", "--config-file", str(candidate)], timeout=SCHEMA_TIMEOUT,
                                check=False)
        except CommandError as exc:
            raise UserDataError(f"cloud-init schema did not answer: {exc}") from None
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).replace(str(candidate), "user-data").split())
        raise UserDataError(f"cloud-init schema refuses the user-data: {said[-600:] or 'no reason given'}")
    if not any(verdict in result.stdout for verdict in VALID):
        raise UserDataError(f"cloud-init schema gave no verdict on the user-data (it printed "
                            f"{' '.join(result.stdout.split())[:120]!r})")
    return None
