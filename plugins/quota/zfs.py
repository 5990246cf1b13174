"""ZFS: a share is a dataset; its limit is the dataset's `refquota`.

`refquota`, not `quota`: snapshots (the backup plugin's, or an administrator's) do not
eat the space the share's users see, as with TrueNAS's dataset quotas.

Commands, all through the agent's runner with time limits. They are the common subset
of OpenZFS (Proxmox's) and zfs-fuse 0.7 (what the tests run): no `-p` for create and
no `-t` for get.

    zfs get -Hp -r -o name,property,value refquota,referenced POOL   every dataset's figures
    zfs set refquota=BYTES|none DATASET                                 set or lift the limit
    zfs create DATASET                                                  a missing share directory
    zfs destroy DATASET                                                 undo that (still empty)

The dataset of a path is the mount table's source of the mount at that path (the kernel
lists a ZFS mount with its dataset name as the source, for OpenZFS and zfs-fuse alike).
"""

from __future__ import annotations

from smbgw_agent.effects.mounts import mount_of
from smbgw_agent.effects.runner import CommandError, Runner

from .backend import Place, QuotaError, Reading, Survey, same_place

TIMEOUT = 60.0
MAX_OUTPUT = 16 << 20
FSTYPES = ("zfs", "fuse.zfs")
# What ZFS allows in one component of a dataset name (zfs(8): alphanumerics and
# underscore, hyphen, colon and period; OpenZFS also allows space).
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:. ")
MAX_NAME = 255


class ZfsError(QuotaError):
    """zfs said something this backend cannot use."""


def _size(text: str, line: str) -> int | None:
    """A `-p` number; 0, "none" and "-" mean no limit (refquota) or nothing (referenced)."""
    if text in ("none", "-"):
        return None
    if not text.isdigit():
        raise ZfsError(f"unexpected value in zfs get output: {line[:120]!r}")
    return int(text) or None


def parse_zfs_get(text: str) -> dict[str, Reading]:
    """`zfs get -Hp -o name,property,value refquota,referenced ...`: tab-separated lines;
    snapshots (name@snap) are skipped. Every dataset must have both properties."""
    properties: dict[str, dict[str, int | None]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ZfsError(f"unreadable line in zfs get output: {line[:120]!r}")
        name, prop, value = fields
        if "@" in name:
            continue
        if prop not in ("refquota", "referenced") or not name:
            raise ZfsError(f"unexpected line in zfs get output: {line[:120]!r}")
        properties.setdefault(name, {})[prop] = _size(value, line)
    readings = {}
    for name, values in properties.items():
        if set(values) != {"refquota", "referenced"}:
            raise ZfsError(f"zfs get did not give both refquota and referenced for {name}")
        readings[name] = Reading(values["refquota"], values["referenced"] or 0)
    return readings


def dataset_of(place: Place) -> str | None:
    """The dataset mounted exactly at the place, if any."""
    if place.mount.fstype in FSTYPES and same_place(place.path, place.mount):
        return place.mount.source
    return None


class ZfsBackend:
    name = "zfs"
    creates = "a ZFS dataset"

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._capacity: dict[str, int] = {}  # pool -> bytes; a backend lives for one pass

    def _run(self, *argv: str) -> str:
        try:
            return self.runner.run(["zfs", *argv], timeout=TIMEOUT, max_output=MAX_OUTPUT).stdout
        except CommandError as exc:
            raise ZfsError(str(exc)) from exc

    def check(self, place: Place) -> None:
        if dataset_of(place) is None:
            parent = place.mount.source if place.mount.fstype in FSTYPES else "POOL/DATASET"
            raise QuotaError(
                f"{place.declared} is a directory inside the dataset {parent}, not a dataset of its own, so no "
                f"refquota can be set on it. Make it one: zfs create {parent}/NEW, move the data into it, "
                f"then set its mountpoint to {place.declared}")

    def survey_key(self, place: Place) -> str:
        return place.mount.source.split("/", 1)[0]  # the pool

    def survey(self, place: Place) -> Survey:
        pool = self.survey_key(place)
        text = self._run("get", "-Hp", "-r", "-o", "name,property,value", "refquota,referenced", pool)
        return Survey(parse_zfs_get(text))

    def reading(self, survey: Survey, place: Place) -> Reading:
        dataset = dataset_of(place)
        return survey.figures.get(dataset, Reading(None, 0)) if dataset else Reading(None, 0)

    def _child(self, place: Place) -> str:
        """The dataset a missing share directory becomes: a child of the dataset mounted at
        its parent directory (zfs-fuse cannot create intermediate datasets)."""
        parent, name = place.path.parent, place.path.name
        if place.mount.fstype not in FSTYPES or not same_place(parent, place.mount):
            raise QuotaError(f"{place.declared} is missing and {parent} is not a dataset's mountpoint: create "
                             f"the dataset yourself (zfs create POOL/.../{name}) with its mountpoint at "
                             f"{place.declared}")
        if not name or len(name) > MAX_NAME or not set(name) <= NAME_CHARACTERS:
            raise QuotaError(f"{name!r} cannot be a ZFS dataset name (letters, digits, _ - : . and space): "
                             f"create the dataset yourself and mount it at {place.declared}")
        return f"{place.mount.source}/{name}"

    def holder(self, place: Place) -> str:
        return f"zfs {dataset_of(place) or self._child(place)}"

    def create(self, place: Place) -> None:
        dataset = self._child(place)
        self._run("create", dataset)
        mount = mount_of(place.path)
        if mount is None or mount.source != dataset or not same_place(place.path, mount):
            raise ZfsError(f"zfs create {dataset} reported success, but it is not mounted at {place.declared} "
                           "(check the parent dataset's mountpoint property)")

    def discard(self, place: Place) -> None:
        self._run("destroy", self._child(place))

    def set_limit(self, place: Place, size: int | None) -> None:
        dataset = dataset_of(place)
        if dataset is None:
            raise ZfsError(f"{place.declared} is not a dataset's mountpoint")
        self._run("set", f"refquota={'none' if size is None else size}", dataset)

    def granted(self, size: int) -> int:
        return size

    def enable(self, place: Place) -> None:
        raise ZfsError("ZFS quotas are always on")

    def capacity(self, place: Place) -> int | None:
        """The pool's size (used + available of its root dataset): statvfs of a dataset
        with a refquota reports the refquota."""
        pool = self.survey_key(place)
        if pool not in self._capacity:
            values = self._run("get", "-Hp", "-o", "value", "used,available", pool).split()
            if len(values) != 2 or not all(v.isdigit() for v in values):
                raise ZfsError(f"zfs get used,available {pool} printed {' '.join(values)[:80]!r}")
            self._capacity[pool] = int(values[0]) + int(values[1])
        return self._capacity[pool]

