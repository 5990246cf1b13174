"""The VM mode's user-data against Debian 12's real cloud-init (`cloud-init schema`, as
the mode runs it on a node that has the command): the rendered user-data of realistic
and awkward shares is accepted, and a broken one is refused with cloud-init's reason,
which the mode reports as the share's error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from smbgw_plugins.mode_vm import userdata

from smbgw_agent.effects.runner import Runner
from tests.support.cloudinit_tool import ensure_cloud_init


@pytest.fixture(scope="module")
def with_cloud_init() -> object:
    folder = ensure_cloud_init()
    before = os.environ["PATH"]
    os.environ["PATH"] = f"{folder}:{before}"
    yield folder
    os.environ["PATH"] = before


@pytest.mark.parametrize("name", ["finance", "Q3 \"plans\": #1 {draft}", "ünïcødé & <tag>"])
def test_cloud_init_accepts_the_rendered_user_data(with_cloud_init: Path, name: str) -> None:
    text = userdata.UserData(name, "x.toml", "pve1", "smbgw-x", "smbgw-x", f"/srv/{name}",
                             f"[global]\n\tserver role = standalone server\n[{name}]\n\tpath = /srv/x\n").render()
    assert userdata.check(Runner(), text) is None


def test_cloud_init_refuses_a_broken_user_data_and_says_why(with_cloud_init: Path) -> None:
    broken = "#cloud-config\nwrite_files: 5\nmounts: {}\n"
    refused = r"cloud-init schema refuses the user-data: .*write_files: 5 is not of type 'array'"
    with pytest.raises(userdata.UserDataError, match=refused):
        userdata.check(Runner(), broken)
