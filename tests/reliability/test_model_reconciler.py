"""The reconciler against a model of what it should serve (hypothesis stateful testing).

Rules do what administrators and bad days do to share files: create, edit, break (syntax,
unknown key, wrong type, a path that escapes), fix, save editor-style (write, then
rename), delete, make a share's directory unservable and servable again, restart the
agent (SIGTERM or SIGKILL) and lose the state database. After every step a forced pass
(`smbgwctl reconcile`) runs, then the invariants are checked against the real agent,
the real smbd and smbclient:

- every share the model says is live is served, with exactly its declared comment and
  read-only flag in its fragment; every other share is not served and has no fragment;
- an invalid file's share serves its last good version (nothing if it never had one),
  except a security problem, which takes the share down;
- status.json agrees (served, failed, refused), the agent is alive, no temporary file
  is left behind.

CI runs a bounded, derandomized (fixed) search; `make test-long` runs a long random one
(SMBGW_MODEL_EXAMPLES, SMBGW_MODEL_STEPS). A failure prints the shortest sequence of
steps that reproduces it.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from devtools.sandbox import Sandbox
from tests.support.procs import RestartableAgent, lasting_temporaries, private_sandbox, write_agent_toml

pytestmark = pytest.mark.integration

NAMES = ("alpha", "beta", "gamma")
EXAMPLES = int(os.environ.get("SMBGW_MODEL_EXAMPLES", "20"))
STEPS = int(os.environ.get("SMBGW_MODEL_STEPS", "15"))
LONG = "SMBGW_MODEL_EXAMPLES" in os.environ
BROKEN = {
    "syntax": 'path = "/srv/smb/{name}\n',
    "unknown key": 'path = "/srv/smb/{name}"\ncolour = "blue"\n',
    "wrong type": 'path = "/srv/smb/{name}"\nread_only = "maybe"\n',
    "relative path": 'path = "srv/smb/{name}"\n',
}
ESCAPING = 'path = "/etc/{name}"\n'  # a security problem: the share goes down
FRAGMENT_COMMENT = re.compile(r"^\s*comment = (.*)$", re.MULTILINE)
FRAGMENT_READ_ONLY = re.compile(r"^\s*read only = (yes|no)$", re.MULTILINE)


@dataclass(frozen=True)
class Declared:
    comment: str
    read_only: bool

    def text(self, name: str) -> str:
        return f'path = "/srv/smb/{name}"\ncomment = "{self.comment}"\nread_only = {str(self.read_only).lower()}\n'


@dataclass
class ModelShare:
    declared: Declared | None = None  # the file's content when it is valid
    exists: bool = False
    unsafe: bool = False  # the file is invalid for a security reason
    lastgood: Declared | None = None
    live: Declared | None = None  # what the agent serves (its fragment)
    servable: bool = True  # the share directory is a directory


@dataclass
class Box:
    sandbox: Sandbox | None = None
    agent: RestartableAgent | None = None
    log: list[str] = field(default_factory=list)


BOX = Box()
STEPS_RUN: list[int] = []


class ReconcilerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert BOX.sandbox is not None
        self.box = BOX.sandbox
        self._reset()
        self.shares = {name: ModelShare() for name in NAMES}

    # ---- plumbing ----------------------------------------------------------------------

    def _reset(self) -> None:
        """A fresh node for each example: no agent, no share files, no state, no fragments."""
        if BOX.agent is not None:
            BOX.agent.stop()
        root = self.box.root
        for directory in (self.box.shares_dir, root / "srv/smb"):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        for directory in (root / "var/lib/smbgw", root / "etc/samba/smbgw", root / "run/smbgw"):
            shutil.rmtree(directory, ignore_errors=True)
        write_agent_toml(self.box)
        BOX.agent = RestartableAgent(self.box)
        BOX.agent.start()

    @property
    def agent(self) -> RestartableAgent:
        assert BOX.agent is not None
        return BOX.agent

    def _file(self, name: str) -> Path:
        return self.box.shares_dir / f"{name}.toml"

    def _settle(self) -> None:
        """A forced full pass, then the model's view of what it must have done."""
        STEPS_RUN.append(1)
        result = self.agent.ctl("reconcile", "--json")
        assert result.returncode in (0, 1), result.stdout + result.stderr
        for share in self.shares.values():
            if not share.exists:
                share.lastgood = share.live = None
                continue
            if share.declared is not None and share.servable:
                share.lastgood = share.declared
            if share.unsafe:
                share.live = None
                continue
            target = share.declared if (share.declared is not None and share.servable) else share.lastgood
            if target is None:
                share.live = None
            elif share.servable:
                share.live = target
            # unservable: applying fails and the share keeps what is live

    def teardown(self) -> None:
        if BOX.agent is not None:
            BOX.agent.stop()

    # ---- rules -------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), comment=st.sampled_from(["", "Team", "Old files"]), read_only=st.booleans())
    def write_valid(self, name: str, comment: str, read_only: bool) -> None:
        """Create, edit or fix a file (the three are the same write)."""
        declared = Declared(comment, read_only)
        self._file(name).write_text(declared.text(name))
        self.shares[name].declared, self.shares[name].exists, self.shares[name].unsafe = declared, True, False
        self._settle()

    @rule(name=st.sampled_from(NAMES), comment=st.sampled_from(["Saved", "Renamed in"]))
    def save_like_an_editor(self, name: str, comment: str) -> None:
        declared = Declared(comment, False)
        temporary = self.box.shares_dir / f".{name}.toml.swp"
        temporary.write_text(declared.text(name))
        os.replace(temporary, self._file(name))
        self.shares[name].declared, self.shares[name].exists, self.shares[name].unsafe = declared, True, False
        self._settle()

    @rule(name=st.sampled_from(NAMES), kind=st.sampled_from(sorted(BROKEN)))
    def break_file(self, name: str, kind: str) -> None:
        self._file(name).write_text(BROKEN[kind].format(name=name))
        self.shares[name].declared, self.shares[name].exists, self.shares[name].unsafe = None, True, False
        self._settle()

    @rule(name=st.sampled_from(NAMES))
    def point_outside(self, name: str) -> None:
        self._file(name).write_text(ESCAPING.format(name=name))
        self.shares[name].declared, self.shares[name].exists, self.shares[name].unsafe = None, True, True
        self._settle()

    @rule(name=st.sampled_from(NAMES))
    def delete_file(self, name: str) -> None:
        self._file(name).unlink(missing_ok=True)
        self.shares[name] = ModelShare(servable=self.shares[name].servable)
        self._settle()

    @rule(name=st.sampled_from(NAMES))
    def make_unservable(self, name: str) -> None:
        directory = self.box.root / "srv/smb" / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.unlink(missing_ok=True)
        directory.write_text("a file where the share directory should be\n")
        self.shares[name].servable = False
        self._settle()

    @rule(name=st.sampled_from(NAMES))
    def make_servable(self, name: str) -> None:
        directory = self.box.root / "srv/smb" / name
        if directory.is_file():
            directory.unlink()
        self.shares[name].servable = True
        self._settle()

    @rule(kill=st.booleans())
    def restart(self, kill: bool) -> None:
        if kill:
            self.agent.kill()
            self.agent.proc = None
        else:
            self.agent.stop()
        self.agent.start()
        self._settle()

    @rule()
    def lose_state(self) -> None:
        self.agent.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.box.root}/var/lib/smbgw/state.sqlite{suffix}").unlink(missing_ok=True)
        self.agent.start()
        for share in self.shares.values():
            share.lastgood = share.live  # all that survives is what is live
        self._settle()

    # ---- invariants --------------------------------------------------------------------

    @invariant()
    def agent_is_alive(self) -> None:
        assert self.agent.running, self.agent.log_text()[-3000:]

    @invariant()
    def served_exactly_as_modelled(self) -> None:
        status = self.agent.status() or {}
        for name, share in self.shares.items():
            fragment = self.box.paths.samba_dir / f"share-{name}.conf"
            reached = self.box.smbclient(name, "ls", timeout=20).returncode == 0
            state = status.get("shares", {}).get(name, {}).get("state")
            if share.live is None:
                assert not fragment.exists(), f"{name}: not live in the model, but {fragment} exists"
                assert not reached, f"{name}: served although the model says it must not be"
                assert state in (None, "refused", "removing"), f"{name}: status says {state}"
                continue
            text = fragment.read_text()
            comment = FRAGMENT_COMMENT.search(text)
            assert (comment.group(1) if comment else "") == share.live.comment, (name, text)
            read_only = FRAGMENT_READ_ONLY.search(text)
            assert read_only and (read_only.group(1) == "yes") == share.live.read_only, (name, text)
            if share.servable:
                assert reached, f"{name}: live in the model but smbclient cannot reach it"
                assert state == "served", f"{name}: status says {state}"
            else:
                assert not reached and state == "failed", f"{name}: unservable, status says {state}"

    @invariant()
    def no_temporary_files(self) -> None:
        root = self.box.root
        assert lasting_temporaries(root / "etc/samba/smbgw", root / "etc/samba", root / "run/smbgw") == []


def test_the_reconciler_matches_its_model() -> None:
    with private_sandbox() as box:
        BOX.sandbox = box
        try:
            run_state_machine_as_test(
                ReconcilerModel,
                settings=settings(
                    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=not LONG,
                    suppress_health_check=list(HealthCheck), database=None, print_blob=True,
                ),
            )
        finally:
            if BOX.agent is not None:
                BOX.agent.stop()
            BOX.agent = BOX.sandbox = None
    print(f"model test: {EXAMPLES} examples, {len(STEPS_RUN)} steps run")
    # Hypothesis picks each example's length (up to STEPS), short ones first: make sure the
    # run as a whole walked far enough to mean something.
    assert len(STEPS_RUN) >= 3 * EXAMPLES, "the state machine ran too few steps to mean anything"
