"""The QEMU guest fixture itself: Debian's kernel boots, runs a script, reports, cleans up.

Every later kernel-level test (XFS/ext4 project quotas, the agent in a VM) stands on these
guarantees, so they are proven once here with the real thing.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devtools.sandbox import free_port
from tests.support import qemu
from tests.support.qemu import GuestImage

pytestmark = pytest.mark.integration
MiB = 1 << 20


def test_the_guest_runs_debians_kernel_with_xfs_quota_tools_and_the_shared_tree(
    qemu_guest_image: GuestImage, tmp_path: Path
) -> None:
    share = tmp_path / "src"
    share.mkdir()
    (share / "hello.txt").write_text("from the host\n")
    script = """set -e
echo "kernel $(uname -r)"
mkfs.xfs -q /dev/vdb && mkdir /tmp/x && mount -o prjquota /dev/vdb /tmp/x  # loads xfs on demand
grep -qw xfs /proc/filesystems && echo "xfs available"
xfs_quota -x -c 'state -p' /tmp/x | grep -q 'Enforcement: ON' && echo "project quota enforced"
for tool in xfs_quota mkfs.xfs setquota repquota quotaon smbd; do command -v "$tool" >/dev/null; done
echo "quota tools present"
cat /mnt/src/hello.txt
cat /mnt/host/given.txt
hostname
if touch /mnt/src/new 2>/dev/null; then echo "share is writable"; fi
"""
    run = qemu.run_in_guest(qemu_guest_image, script, files={"given.txt": "a file for the guest\n"}, share=share,
                            disks=[("xfs", 300 * MiB)])
    assert run.rc == 0, run.report()
    assert f"kernel {qemu_guest_image.kernel_version}\n" in run.output
    expected = ("xfs available", "project quota enforced", "quota tools present", "from the host",
                "a file for the guest", qemu.GUEST_HOSTNAME)
    for line in expected:
        assert line + "\n" in run.output, run.report()
    assert "share is writable" not in run.output
    assert not (share / "new").exists()
    assert not run.run_dir.exists(), "the run dir is removed after the run"


def test_the_scripts_exit_code_is_reported(qemu_guest_image: GuestImage) -> None:
    run = qemu.run_in_guest(qemu_guest_image, "echo failing on purpose; exit 3\n")
    assert run.rc == 3, run.report()
    assert run.output == "failing on purpose\n"
    assert not run.timed_out


def test_scratch_disks_appear_in_order_with_their_size(qemu_guest_image: GuestImage) -> None:
    script = "blockdev --getsize64 /dev/vdb /dev/vdc\n"
    run = qemu.run_in_guest(qemu_guest_image, script, disks=[("xfs", 300 * MiB), ("ext4", 64 * MiB)])
    assert run.rc == 0, run.report()
    assert run.output.split() == [str(300 * MiB), str(64 * MiB)]


def test_a_hung_guest_is_killed_at_the_timeout_and_nothing_is_left_behind(
    qemu_guest_image: GuestImage, tmp_path: Path
) -> None:
    run = qemu.run_in_guest(qemu_guest_image, "echo sleeping; sleep infinity\n", timeout=30, tmp_root=tmp_path)
    assert run.rc is None, run.report()
    assert run.timed_out
    assert 30 <= run.duration < 60
    assert not Path(f"/proc/{run.qemu_pid}").exists(), "our qemu process is gone"
    assert list(tmp_path.iterdir()) == [], "run dir and its disks are removed"


def test_a_host_port_reaches_the_guest_while_it_runs(qemu_guest_image: GuestImage) -> None:
    """The shape VM-mode tests take: boot, talk to the guest over a forwarded port, stop."""
    port = free_port()
    script = """mkdir -p /tmp/www && echo served-by-the-guest > /tmp/www/index.txt
ip -4 -o addr show eth0
python3 -m http.server 8000 --directory /tmp/www > /tmp/http.log 2>&1 &
while [ ! -e /mnt/host/stop ]; do sleep 0.2; done
"""
    with qemu.boot_guest(qemu_guest_image, script, network=True, hostfwd={port: 8000}) as guest:
        deadline = time.monotonic() + 120
        body = ""
        while not body and time.monotonic() < deadline and guest.running:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.txt", timeout=5) as response:
                    body = response.read().decode()
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        (guest.host_dir / "stop").touch()
        run = guest.wait(60)
    assert body == "served-by-the-guest\n", run.report()
    assert run.rc == 0, run.report()
    assert "10.0.2.15/24" in run.output
