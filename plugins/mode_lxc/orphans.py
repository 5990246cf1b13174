"""Destroying the containers the agent made for shares no file declares any more, when
`[proxmox] destroy_orphans = true` (plugins/proxmox/orphans.py says which guests are
orphans and when one may be destroyed)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from smbgw_agent.platform.jobs import JobProgress

from ..proxmox.guestconf import GuestConfigError, read_guest_config
from ..proxmox.orphans import Orphan, destroyable
from .pct import RUNNING, Pct

log = logging.getLogger(__name__)


def destroy_job(pct: Pct, folder: Path, orphans: list[Orphan], wanted_tags: Collection[str],
                shares_dir: Path, here: str | None) -> Callable[[JobProgress], dict[str, Any]]:
    def run(progress: JobProgress) -> dict[str, Any]:
        destroyed, kept = [], {}
        for orphan in orphans:
            try:
                config = read_guest_config(folder / f"{orphan.vmid}.conf")
            except GuestConfigError as exc:
                kept[orphan.vmid] = str(exc)
                continue
            reason = destroyable(orphan, config, wanted_tags, shares_dir, here)
            if reason:
                kept[orphan.vmid] = reason
                continue
            progress.report(f"destroying orphaned container {orphan.vmid} ({orphan.named()})")
            if pct.status(orphan.vmid) == RUNNING:
                pct.stop(orphan.vmid)
            pct.destroy(orphan.vmid)
            log.warning("lxc: destroyed container %d (%s): its share file %s is gone and [proxmox] "
                        "destroy_orphans = true", orphan.vmid, orphan.named(), orphan.file)
            destroyed.append(orphan.vmid)
        return {"destroyed": destroyed, "kept": kept}

    return run
