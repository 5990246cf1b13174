"""smbgwctl's plugin verbs: options with values on the command line, and a running job's
progress printed as it comes (not with --json)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from smbgw_agent import cli
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.commands import Command
from smbgw_agent.platform.jobs import Job
from tests.support.jobloop import job_loop, short_directory


def start(ctx: Any, arguments: Mapping[str, Any]) -> Job:
    raise AssertionError("the agent starts the job, not smbgwctl")


DRAIN = Command("drain", "move every share off a node", start, arguments=("node",),
                flags=(("force", "even with open files"),),
                options=(("timeout", "give up after this long"), ("max-wait", "per session")))


def parse(*argv: str) -> dict[str, Any]:
    args = cli.build_parser({"drain": DRAIN}).parse_args(["drain", *argv])
    return cli.verb_arguments(DRAIN, args)


def test_options_take_a_value_and_are_null_when_not_given() -> None:
    assert parse("pve1", "--timeout", "5m", "--max-wait", "30s", "--force") == {
        "node": "pve1", "force": True, "timeout": "5m", "max-wait": "30s"}
    assert parse("pve1") == {"node": "pve1", "force": False, "timeout": None, "max-wait": None}
    assert parse("--timeout=5m", "pve1")["timeout"] == "5m"


def test_an_option_without_its_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("pve1", "--timeout")
    assert exited.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_help_lists_options_with_their_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    shown = capsys.readouterr().out
    assert "--timeout VALUE" in shown and "give up after this long" in shown and "--max-wait VALUE" in shown


# ---- progress, through a real control socket ------------------------------------------------------


@pytest.fixture
def root() -> Iterator[Path]:
    with short_directory() as directory:
        yield directory


def drain_job(node: str) -> Job:
    """Reports "one", then (once a poll has surely seen it) "two", and ends."""
    def run(progress: Any) -> dict[str, Any]:
        progress.report("one")
        threading.Event().wait(0.6)
        progress.report("two \x1b[2J\nforged")
        return {"text": f"drained {node}"}
    return Job(f"drain:{node}", run, 30)


def run_verb(root: Path, *argv: str) -> int:
    args = cli.build_parser({"drain": DRAIN}).parse_args(["drain", *argv])
    return cli.cmd_plugin_verb(Paths.under(str(root)), DRAIN, args)


def test_progress_lines_are_printed_as_they_come_then_the_outcome(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with job_loop(Paths.under(str(root)).control_socket, drain_job("pve1")) as loop:
        assert run_verb(root, "pve1", "--timeout", "5m") == cli.EXIT_OK
    assert capsys.readouterr().out.splitlines() == ["one", "two \\x1b[2J\\x0aforged", "drained pve1"]
    [payload] = loop.payloads
    assert payload["progress"] is True
    assert payload["arguments"] == {"node": "pve1", "force": False, "timeout": "5m", "max-wait": None}


def test_with_json_only_the_final_reply_is_printed(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with job_loop(Paths.under(str(root)).control_socket, drain_job("pve1")) as loop:
        assert run_verb(root, "pve1", "--json") == cli.EXIT_OK
    reply = json.loads(capsys.readouterr().out)  # one JSON document, nothing before it
    assert reply["ok"] is True and reply["result"] == {"text": "drained pve1"}
    assert loop.payloads[0]["progress"] is True, "smbgwctl always asks; it only does not print"


def test_a_refused_option_value_comes_back_as_the_agent_s_message(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def refusing(path: Path, command: str, **fields: Any) -> dict[str, Any]:
        assert callable(fields.pop("on_progress"))
        try:
            DRAIN.arguments_from(fields["arguments"])
        except Exception as exc:
            return {"ok": False, "error": str(exc)}
        raise AssertionError("an empty --timeout must be refused")

    monkeypatch.setattr(cli, "request", refusing)
    args = cli.build_parser({"drain": DRAIN}).parse_args(["drain", "pve1", "--timeout", ""])
    assert cli.cmd_plugin_verb(Paths.under("/nonexistent"), DRAIN, args) == cli.EXIT_PROBLEMS
    assert "--timeout must be a printable string" in capsys.readouterr().err
