"""The Debian-versions pass on every supported release, inside a container of that release.

Proxmox VE 8 runs on Debian 12 "bookworm", Proxmox VE 9 on Debian 13 "trixie". The .deb
runs with /usr/bin/python3 and Debian's own python3-* packages of the release it is
installed on, and with that release's Samba and systemd. So the unit tests, the plugin
conformance suite and the core serving tests run once per release with exactly those:
on the host for the host's release (bookworm: `make test-debian`), and in a booted
container of the other release (`make test-trixie`), built once by debootstrap and
shared with the .deb end-to-end test of that release.

    python3 -m tests.support.releases trixie [PYTEST ARGS...]

The source tree is copied into the container (so the tests may write next to their
files without touching the checkout); the tests run as root, with smbd on the
container's own loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import nspawn
from tests.support.debpkg import CONTAINER_PACKAGES

REPO = Path(__file__).resolve().parents[2]
RELEASES = ("bookworm", "trixie")
HOST_RELEASE = "bookworm"
# The .deb's dependencies plus what the tests use: one image per release serves both the
# release pass and the .deb end-to-end test.
TEST_PACKAGES: tuple[str, ...] = (
    *CONTAINER_PACKAGES, "python3-pytest", "python3-hypothesis", "python3-yaml", "openssl", "prometheus",
    "prometheus-alertmanager", "passwd", "restic",
)
# The release's lintian, for checking the .deb there (installed by apt after debootstrap).
TEST_APT_PACKAGES: tuple[str, ...] = ("lintian",)
# What the Debian-versions pass runs (the same list as `make test-debian`), less the
# quota and backup plugins' conformance on btrfs: it needs loop devices, which a
# container does not get; btrfs is the host's kernel either way, and the bookworm pass
# runs it.
PASS_TESTS: tuple[str, ...] = (
    "tests/unit", "tests/conformance", "tests/integration/test_native_serving.py",
    "tests/integration/test_security_profile.py", "-k", "not (test_conformance and (quota or backup))",
)
_IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", "build", "sandbox", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
    ".hypothesis", "*.egg-info",
)


def release_image(release: str) -> Path:
    """The image of `release` with the .deb's dependencies and the test tools (cached by
    content: the package list and release are in its name)."""
    return nspawn.ensure_base_image(TEST_PACKAGES, release, apt=TEST_APT_PACKAGES)


def package_test_image(release: str) -> Path:
    """The image the .deb end-to-end test boots for `release`. For the host's release it
    needs nothing but the .deb's dependencies (its tests run on the host); for the other,
    it is the release pass's image, so each release's image is built once."""
    if release == HOST_RELEASE:
        return nspawn.ensure_base_image(CONTAINER_PACKAGES, release)
    return release_image(release)


def run_pass(release: str, pytest_args: list[str]) -> int:
    started = time.monotonic()
    image = release_image(release)
    built = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix=f"smbgw-{release}-src-", dir="/var/tmp") as copy:
        source = Path(copy) / "src"
        shutil.copytree(REPO, source, ignore=_IGNORED, symlinks=True)
        began = time.monotonic()
        with nspawn.boot_container(image, nspawn_args=[f"--bind={source}:/src"]) as container:
            booted = time.monotonic() - began
            versions = container.run(["python3", "-c", (
                "import sys, pluggy, prometheus_client as p, pyroute2, jinja2; "
                "from importlib.metadata import version as v; "
                "print(sys.version.split()[0], pluggy.__version__, v('prometheus_client'), "
                "v('pyroute2'), v('watchdog'), jinja2.__version__)"
            )]).stdout.split()
            samba = container.run(["smbd", "--version"]).stdout.strip()
            systemd = container.run(["systemctl", "--version"]).stdout.split()[1]
            print(f"[{release}] image {built:.1f} s (0 = reused), boot {booted:.1f} s; python {versions[0]}, "
                  f"pluggy {versions[1]}, prometheus-client {versions[2]}, pyroute2 {versions[3]}, "
                  f"watchdog {versions[4]}, jinja2 {versions[5]}, {samba}, systemd {systemd}", flush=True)
            script = (
                "cd /src && exec env PYTHONPATH=/src PYTHONDONTWRITEBYTECODE=1 HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hyp "
                "CI=\"$1\" python3 -m pytest -q -p no:cacheprovider \"${@:2}\""
            )
            ci = os.environ.get("CI", "")  # skips of real-component tests fail under CI, there too
            argv = ["/bin/bash", "-c", script, "bash", ci, *(pytest_args or PASS_TESTS)]
            began = time.monotonic()
            proc = subprocess.run(container._nsenter(argv), env=nspawn._CONTAINER_ENV, check=False,
                                  stdin=subprocess.DEVNULL, timeout=1800)
            print(f"[{release}] tests {time.monotonic() - began:.1f} s, whole pass {time.monotonic() - started:.1f} s",
                  flush=True)
            return proc.returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in RELEASES:
        print(f"usage: python3 -m tests.support.releases {{{'|'.join(RELEASES)}}} [PYTEST ARGS...]", file=sys.stderr)
        return 2
    missing = nspawn.missing_requirements()
    if missing:
        print(f"cannot run the {argv[0]} pass: {'; '.join(missing)}", file=sys.stderr)
        return 2
    return run_pass(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
