"""Fixtures for integration tests that need real components."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import nspawn, qemu
from tests.support.nspawn import ContainerFactory
from tests.support.qemu import GuestImage


@pytest.fixture(scope="session")
def nspawn_base_image() -> Path:
    """The default systemd container image, built on first use (~65 s) and then reused."""
    missing = nspawn.missing_requirements()
    if missing:
        pytest.skip("systemd containers unavailable: " + "; ".join(missing))
    return nspawn.ensure_base_image()


@pytest.fixture(scope="session")
def qemu_guest_image() -> GuestImage:
    """The QEMU guest image (Debian's own kernel, bookworm), built on first use (~2 min) and
    then reused: XFS and ext4 project quotas run in it, and the VM mode's guest."""
    missing = qemu.missing_requirements()
    if missing:
        pytest.skip("QEMU guests unavailable: " + "; ".join(missing))
    return qemu.ensure_guest_image()


@pytest.fixture
def systemd_container_factory(nspawn_base_image: Path) -> Iterator[ContainerFactory]:
    """Boot any number of containers in one test; all are torn down afterwards.

    Keyword arguments go to :func:`tests.support.nspawn.boot_container` (``files``,
    ``name``, ``private_network``, ``nspawn_args``, ...); pass ``image=`` for an image
    built by :func:`tests.support.nspawn.ensure_base_image` with other packages.
    """
    started: list[nspawn.SystemdContainer] = []

    def factory(**kwargs: Any) -> nspawn.SystemdContainer:
        image = kwargs.pop("image", nspawn_base_image)
        container = nspawn.boot_container(image, **kwargs)
        started.append(container)
        return container

    yield factory
    errors: list[BaseException] = []
    for container in reversed(started):
        try:
            container.stop()
        except Exception as exc:  # tear down the others before reporting
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def systemd_container(systemd_container_factory: ContainerFactory) -> nspawn.SystemdContainer:
    """One freshly booted Debian 12 container with systemd as PID 1 and no network."""
    return systemd_container_factory()


# ---- sandboxed agent with real smbd --------------------------------------------------

from devtools.sandbox import Sandbox  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.procs import RestartableAgent, private_sandbox  # noqa: E402


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A sandbox root with the admin's smb.conf and a running smbd on a free loopback port.

    Rooted under /var/tmp, not pytest's tmp_path: see `private_sandbox` for why.
    """
    with private_sandbox() as box:
        yield box


@pytest.fixture
def agent(sandbox: Sandbox) -> Iterator[AgentProcess]:
    """The agent running (as a real process) against the sandbox."""
    process = AgentProcess(sandbox)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def restartable(sandbox: Sandbox) -> Iterator[RestartableAgent]:
    """An agent the test starts, kills and restarts itself (not started yet)."""
    process = RestartableAgent(sandbox)
    try:
        yield process
    finally:
        process.stop()
