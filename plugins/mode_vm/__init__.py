"""VM mode (`mode = "vm"`): a share served by Samba in its own VM (docs/vm.md)."""
