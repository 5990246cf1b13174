"""What the Proxmox guest modes (lxc, vm) share: the agent.toml `[proxmox]` table, the
cluster's guest list (`/etc/pve/.vmlist`) and VMID allocation. A library, not a plugin:
the mode plugins import it; `mode_lxc` owns the table's validation."""
