"""`smbgwctl drain --target NODE`, the VM mode's part: move this node's share VMs to
another node with Proxmox HA (`ha-manager crm-command relocate vm:VMID NODE`: HA shuts
the VM down, moves it and starts it there; clients reconnect to the same address), one
after another.

Why relocation and not `qm migrate --online`: qemu-server 8.4 refuses to live-migrate a
VM with a virtiofs device ("Cannot live-migrate ... with: virtiofs"), and a VM-mode
share's data is one. A VM can move only when its data and disks can: the share must ask
for Proxmox HA (`[ha] proxmox_ha = true`, which the agent allows only with the VM's disks
on shared storage) and so its directory is on storage every node mounts; before HA moves
it, the share's directory mapping gets an entry for the target node (the same path),
without which Proxmox refuses the move ("missing mapped devices"). Other VMs are refused
up front, unless `--force` leaves them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.platform.jobs import Job, JobProgress

from ..proxmox import hamanager
from ..proxmox.drain import await_arrival
from ..proxmox.vmlist import VmlistError
from .pvesh import Pvesh, PveshError

JOB = "vm:drain"
RELOCATE_TIMEOUT = 900.0  # a shutdown, a move, a boot


def relocate_job(runner: Runner, vmlist: Path, vms: Mapping[int, tuple[str, str, str]], target: str,
                 left: Mapping[int, str]) -> Job:
    """`vms`: VMID -> (share, its mapping id, its host path); `left`: the ones --force
    leaves here, with why."""
    pvesh = Pvesh(runner)

    def run(progress: JobProgress) -> dict[str, Any]:
        moved, failed = [], {}
        for vmid, (share, mapping, path) in sorted(vms.items()):
            progress.report(f"relocating VM {vmid} (share {share}) to {target} with Proxmox HA")
            try:
                found = pvesh.mappings().get(mapping)
                if found is None or found.paths.get(target) != path:
                    paths = {**(found.paths if found else {}), target: path}
                    if found is not None:
                        pvesh.delete_mapping(mapping)
                    pvesh.create_mapping(mapping, paths, share)
                hamanager.relocate(runner, f"vm:{vmid}", target)
                await_arrival(vmlist, vmid, target, progress, "VM", RELOCATE_TIMEOUT)
                moved.append(vmid)
            except (CommandError, PveshError, TimeoutError, VmlistError) as exc:
                failed[vmid] = str(exc)
        text = f"moved VM(s) {', '.join(map(str, moved))} to {target}" if moved else "moved no VM"
        if left:
            text += f"; left here: {', '.join(f'{vmid} ({why})' for vmid, why in sorted(left.items()))}"
        if failed:
            raise RuntimeError(f"{text}; could not move: " + "; ".join(f"{vmid}: {why}" for vmid, why in
                                                                        sorted(failed.items())))
        return {"text": text, "moved": moved, "target": target}

    return Job(JOB, run, RELOCATE_TIMEOUT * max(1, len(vms)) + 60.0)
