"""Proxmox's `qm`, run through the agent's runner: one method per subcommand the mode
uses, each with its own time limit; output read by `qmout.py`.

`qm guest exec` is how the agent works inside a running VM: through the QEMU guest
agent, without a network path, ssh keys or a password in the guest. What a command
reads goes in with `--pass-stdin` (Proxmox reads at most 1 MiB), never in argv, so a
secret never shows in `ps` on the node or in the guest; `--timeout` bounds how long qm
waits for the command inside.

None of these run inside a reconcile pass: clone, start and the wait for the guest are
the mode's jobs (plugins/mode_vm/plugin.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from smbgw_agent.effects.runner import CommandError, Completed, Runner

from .qmout import (
    ExecResult,
    ListedVm,
    QmOutputError,
    leased,
    parse_exec,
    parse_interfaces,
    parse_list,
    parse_status,
)

QM = "qm"
CLONE_TIMEOUT = 900.0  # a full clone copies the template's disk
START_TIMEOUT = 120.0
STOP_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 180.0
DESTROY_TIMEOUT = 300.0
MIGRATE_TIMEOUT = 1800.0  # an online migration copies the VM's memory (and a local disk)
QUICK_TIMEOUT = 60.0
EXEC_TIMEOUT = 60  # seconds qm waits for a command inside the guest
MAX_STDIN = 1 << 20
RUNNING, STOPPED = "running", "stopped"


class GuestExecError(RuntimeError):
    """A command inside the VM failed (or did not finish in time)."""


class Qm:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def _run(self, argv: Sequence[str], timeout: float, stdin: str | None = None, check: bool = True,
             secrets: Iterable[str] = ()) -> Completed:
        return self.runner.run([QM, *argv], timeout=timeout, stdin=stdin, check=check, secrets=secrets)

    def clone(self, template: int, vmid: int, name: str, full: bool, storage: str | None = None) -> None:
        argv = ["clone", str(template), str(vmid), "--name", name, "--full", "1" if full else "0"]
        if full and storage:
            argv += ["--storage", storage]  # a linked clone stays on the template's storage
        self._run(argv, CLONE_TIMEOUT)

    def set(self, argv: Sequence[str]) -> None:
        """`argv`: `vmconf.set_arguments`."""
        self._run(argv, QUICK_TIMEOUT)

    def start(self, vmid: int) -> None:
        self._run(["start", str(vmid)], START_TIMEOUT)

    def stop(self, vmid: int) -> None:
        """Hard stop (QEMU is killed): for a VM that is being destroyed or never came up."""
        self._run(["stop", str(vmid)], STOP_TIMEOUT)

    def shutdown(self, vmid: int) -> None:
        """Clean shutdown through the guest agent (or ACPI); stops it hard when it does not
        go down in time."""
        self._run(["shutdown", str(vmid), "--timeout", str(int(SHUTDOWN_TIMEOUT - 30)), "--forceStop", "1"],
                  SHUTDOWN_TIMEOUT)

    def destroy(self, vmid: int) -> None:
        """`--purge`: also out of backup jobs, replication and HA; disks it references go
        with it (a virtiofs share is a host directory, not a disk: it stays)."""
        self._run(["destroy", str(vmid), "--purge", "1"], DESTROY_TIMEOUT)

    def migrate(self, vmid: int, target: str) -> None:
        self._run(["migrate", str(vmid), target, "--online", "1"], MIGRATE_TIMEOUT)

    def status(self, vmid: int) -> str:
        return parse_status(self._run(["status", str(vmid)], QUICK_TIMEOUT).stdout)

    def list(self) -> dict[int, ListedVm]:
        return parse_list(self._run(["list"], QUICK_TIMEOUT).stdout)

    def ping(self, vmid: int, timeout: float = 30.0) -> bool:
        """The guest agent answers (`qm guest cmd VMID ping`: exit 0 and nothing printed,
        as qm.pm prints an agent's empty answer; anything else is no answer)."""
        try:
            result = self._run(["guest", "cmd", str(vmid), "ping"], timeout)
        except CommandError:
            return False
        return not result.stdout.strip()

    def leased_address(self, vmid: int, mac: str, timeout: float = 30.0) -> str | None:
        """The IPv4 address VM `vmid` holds by DHCP on its NIC `mac`, as its guest agent
        sees it (`qm guest cmd VMID network-get-interfaces`); None while it has none.
        CommandError when the agent does not answer, QmOutputError for garbage."""
        return leased(parse_interfaces(self._run(["guest", "cmd", str(vmid), "network-get-interfaces"],
                                                 timeout).stdout), mac)

    def guest_exec(self, vmid: int, argv: Sequence[str], *, stdin: str | None = None, timeout: int = EXEC_TIMEOUT,
                   check: bool = True, secrets: Iterable[str] = ()) -> ExecResult:
        """`argv` inside the VM; its exit code, stdout and stderr."""
        if stdin is not None and len(stdin.encode()) > MAX_STDIN:
            raise GuestExecError(f"{len(stdin.encode())} bytes for the guest's stdin: qm passes at most 1 MiB")
        head = ["guest", "exec", str(vmid), "--timeout", str(timeout)]
        if stdin is not None:
            head += ["--pass-stdin", "1"]
        completed = self._run([*head, "--", *argv], timeout + 30.0, stdin=stdin, secrets=secrets)
        try:
            result = parse_exec(completed.stdout)
        except QmOutputError as exc:
            raise GuestExecError(f"{argv[0] if argv else '?'} in VM {vmid}: {exc}") from None
        if check and not result.ok:
            said = (result.err.strip() or result.out.strip()).splitlines()[-3:]
            raise GuestExecError(f"{' '.join(argv)[:200]} in VM {vmid}: exit {result.exitcode}: "
                                 f"{' / '.join(said) or 'no output'}")
        return result
