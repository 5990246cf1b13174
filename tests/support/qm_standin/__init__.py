"""TEST STAND-IN (never shipped): Proxmox's `qm` over real QEMU guests, for the VM mode's tests."""
