"""Proxmox HA through its own tool, `ha-manager` (pve-ha-manager), run by the agent's
runner: register a guest as an HA resource that HA keeps started (and moves to another
node when this one fails), and take it out again. What is registered is read from
/etc/pve/ha/resources.cfg (haresources.py)."""

from __future__ import annotations

from pathlib import Path

from smbgw_agent.effects.runner import Runner

from .haresources import RESOURCES, HaConfigError, read_resources

HA_MANAGER = "ha-manager"
TIMEOUT = 60.0  # both take the cluster-wide HA lock


def comment(share: str) -> str:
    return f"smbgw-agent share {share}"


def add(runner: Runner, sid: str, share: str, resources: Path) -> None:
    """`ha-manager add ct:VMID --state started`: HA starts it if it is not running.
    Checked in the resource list afterwards: what the tool prints on success is not
    read, so a tool that exits 0 without doing it is caught here."""
    runner.run([HA_MANAGER, "add", sid, "--state", "started", "--comment", comment(share)], timeout=TIMEOUT)
    if sid not in read_resources(resources):
        raise HaConfigError(f"ha-manager add {sid} ended without an error, but {sid} is not in {RESOURCES}")


def remove(runner: Runner, sid: str, resources: Path) -> None:
    """The guest stays as it is (running or not); HA no longer manages it."""
    runner.run([HA_MANAGER, "remove", sid], timeout=TIMEOUT)
    if sid in read_resources(resources):
        raise HaConfigError(f"ha-manager remove {sid} ended without an error, but {sid} is still in {RESOURCES}")


def relocate(runner: Runner, sid: str, target: str) -> None:
    """`ha-manager crm-command relocate SID NODE`: HA stops the guest, moves it to NODE and
    starts it there. Only queued here: the caller waits until the cluster lists it on
    NODE. (A VM with a virtiofs directory cannot be live-migrated, qemu-server 8.4 refuses
    it, so relocation, not migration, is how HA moves one.)"""
    runner.run([HA_MANAGER, "crm-command", "relocate", sid, target], timeout=TIMEOUT)
