"""XFS and ext4 project quotas, for real: in a QEMU guest with Debian's own kernel (this
host's kernel has no quota support), the whole agent from this checkout, real smbd.

The guest runs tests/support/quota_in_guest.py (its docstring lists the steps; each
asserts). Here: it finished, and the reports the file systems' own tools printed parse
with the plugin's parsers to the figures the guest saw.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from smbgw_plugins.quota.project import parse_repquota_csv, parse_xfs_report

from tests.support.qemu import GuestImage, run_in_guest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
SCRIPT = """\
set -e
cd /mnt/src
export PYTHONPATH=/mnt/src PYTHONDONTWRITEBYTECODE=1
python3 -m tests.support.quota_in_guest /mnt/host
"""


def test_xfs_and_ext4_project_quotas_through_smb_in_a_guest_with_debians_kernel(
    qemu_guest_image: GuestImage,
) -> None:
    run = run_in_guest(qemu_guest_image, SCRIPT, disks=[("xfs", 320 * MiB), ("ext4", 320 * MiB)],
                       share=REPO, timeout=900, keep_run_dir=True)
    try:
        assert run.rc == 0 and "ALL OK" in run.output, run.report()
        host = run.run_dir / "host"
        xfs = parse_xfs_report((host / "xfs-report.txt").read_text())
        ext4 = parse_repquota_csv((host / "ext4-report.txt").read_text())
        for readings in (xfs, ext4):
            limited = [(ident, r) for ident, r in readings.items() if r.limit is not None]
            assert len(limited) == 1 and limited[0][0] in (100000, 100001), readings  # from the configured range
            reading = limited[0][1]
            assert reading.limit == 8 * MiB and 2 * MiB <= reading.used <= 8 * MiB, readings
    finally:
        shutil.rmtree(run.run_dir, ignore_errors=True)
