"""What the Proxmox guest modes (lxc, vm) share: the agent.toml `[proxmox]` table (owned by
the small `proxmox` plugin in plugin.py), the cluster's guest list (`/etc/pve/.vmlist`),
VMID allocation, guest configs, identity tags and orphans. The mode plugins import it."""
