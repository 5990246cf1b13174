"""Every managed path, resolved under an optional sandbox root.

One object owns the mapping so that `--root DIR` cannot miss a path: code never
builds an absolute host path by itself, it asks `Paths`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_AGENT_CONFIG = "/etc/smbgw/agent.toml"
DEFAULT_SHARES_DIR = "/etc/smbgw/shares.d"
STATE_DIR = "/var/lib/smbgw"
RUN_DIR = "/run/smbgw"
SAMBA_OUTPUT_DIR = "/etc/samba/smbgw"
SMB_CONF = "/etc/samba/smb.conf"


_FILESYSTEM_ROOT = Path("/")  # built once: `sandboxed` is asked several times per share


@functools.lru_cache(maxsize=1 << 16)
def _host(root: Path, declared: str) -> Path:
    """Memoised: a pass maps every share's path several times, and pathlib parsing is the
    cost (Path objects are immutable, so sharing them is safe)."""
    path = PurePosixPath(declared)
    if not path.is_absolute():
        raise ValueError(f"{declared} is not absolute")
    return root.joinpath(*path.parts[1:])


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def under(cls, root: str | os.PathLike[str] | None) -> Paths:
        return cls(Path(root).resolve() if root else Path("/"))

    @property
    def sandboxed(self) -> bool:
        return self.root != _FILESYSTEM_ROOT

    def host(self, declared: str | PurePosixPath) -> Path:
        """Map a path as written in a config file (absolute) to the path on this host."""
        return _host(self.root, str(declared))

    def declared(self, host_path: Path) -> PurePosixPath:
        """Inverse of `host`, for messages that should show what the admin wrote."""
        return PurePosixPath("/") / host_path.relative_to(self.root)

    @property
    def agent_config(self) -> Path:
        return self.host(DEFAULT_AGENT_CONFIG)

    @property
    def state_dir(self) -> Path:
        return self.host(STATE_DIR)

    @property
    def run_dir(self) -> Path:
        return self.host(RUN_DIR)

    @property
    def status_file(self) -> Path:
        return self.run_dir / "status.json"

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "control.sock"

    @property
    def samba_dir(self) -> Path:
        return self.host(SAMBA_OUTPUT_DIR)

    @property
    def smb_conf(self) -> Path:
        return self.host(SMB_CONF)
