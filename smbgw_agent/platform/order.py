"""Where a plugin runs within each phase, as a number (lower runs first).

Some plugins depend on others within one pass: the cluster (CTDB) must be configured
before the node joins a domain, the domain before shares name domain groups, storage
(quota subvolumes) before a mode serves the directory, snapshots after it exists, and a
virtual IP only once the share behind it is served. A plugin declares one of these ranks
with `smbgw_order`; plugins of the same rank run in name order. The plugin host
registers plugins so that pluggy's own calling order is this order.
"""

from __future__ import annotations

CLUSTER = 100
DIRECTORY = 200
STORAGE = 300
MODE = 400
DATA_PROTECTION = 500
ADDRESS = 600
DEFAULT = 1000
