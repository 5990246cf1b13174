"""smb.conf parameters that plugins contribute to a share's section and to the globals.

A mode renders one smb.conf per target (``host`` for the node's own smbd, ``lxc:VMID`` or
``vm:VMID`` for one inside a guest) and asks the core for the parameters every plugin
wants there. The core merges them: a list parameter such as ``vfs objects`` is the union
of every contribution in rank order (the VFS stack is order-sensitive: a module that
rewrites paths must come before the one that stores them), a scalar parameter must have
one value, and two plugins wanting different values is a conflict that fails the share
(or, for the globals, the pass) with both plugins named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.smbvalues import check_parameter_name, check_text

HOST = "host"
LIST_PARAMETERS = frozenset({"vfs objects"})
DEFAULT_RANK = 50


@dataclass(frozen=True)
class Parameter:
    """One parameter a plugin wants. For list parameters `value` is one or more items
    (space separated) and `rank` orders them in the merged list (lower first)."""

    name: str
    value: str
    rank: int = DEFAULT_RANK


class ParameterConflict(FieldError):
    """Two sources want different values for one parameter."""


def _normal(name: str) -> str:
    """Samba treats `vfs objects`, `VFS Objects` and `vfsobjects` as one parameter."""
    return check_parameter_name(name).casefold().replace(" ", "")


_LIST_NORMAL = frozenset(name.replace(" ", "") for name in LIST_PARAMETERS)


def merge_parameters(
    contributions: Iterable[tuple[str, Parameter]], what: str,
) -> list[tuple[str, str]]:
    """Merge (source, parameter) pairs in the order given; raises ParameterConflict.

    `what` names the section in messages ("share [finance]", "the globals").
    """
    scalars: dict[str, tuple[str, str, str]] = {}  # normal name -> (name, value, source)
    lists: dict[str, tuple[str, list[tuple[int, int, str, str]]]] = {}
    position = 0
    for source, parameter in contributions:
        name = check_parameter_name(parameter.name)
        value = check_text(str(parameter.value), f"{what}: {name}", allow_percent=True)
        normal = _normal(name)
        if normal in _LIST_NORMAL:
            items = lists.setdefault(normal, (name, []))[1]
            for item in value.split():
                items.append((parameter.rank, position, item, source))
                position += 1
            continue
        known = scalars.get(normal)
        if known is not None and known[1] != value:
            raise ParameterConflict(
                f"{what}: {known[2]} wants {known[0]} = {known[1]!r}, {source} wants {value!r}"
            )
        scalars.setdefault(normal, (name, value, source))
    merged = [(name, value) for name, value, _ in scalars.values()]
    for name, items in lists.values():
        ordered: list[str] = []
        for _rank, _position, item, _source in sorted(items):
            if item not in ordered:
                ordered.append(item)
        merged.append((name, " ".join(ordered)))
    return sorted(merged)

