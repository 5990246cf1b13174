"""LXC mode: each share served by Samba inside its own Proxmox container (`mode = "lxc"`).

table.py (the share's [lxc] table), idmap.py (the unprivileged container's id map),
guest.py (the container's Proxmox options and how a live one differs), pct.py (Proxmox's
`pct`, run and parsed)."""
