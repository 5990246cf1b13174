"""TEST STAND-IN (never shipped): Proxmox VE's `pct` over Debian's own LXC 5.0, for tests.

`pct.py` is the command (``python3 -m tests.support.pct_standin.pct``, or ``bin/pct``
put first on PATH); `image.py` builds the root file system its templates stand for.
"""
