"""An administrator's existing shares as share files (`smbgwctl import`), pure.

The input is what `testparm -s` prints for their smb.conf: includes followed, synonyms
folded into canonical names (`writeable = yes` becomes `read only = No`), defaults left
out. So one section is one share with only what the administrator changed, and the
mapping is small:

- `path`, `comment`, `read only`, `browseable`, `valid users`: the share table's keys;
  `read only` and `browseable` are always written, as the section has them in effect
  (its own value, else `[global]`'s, else Samba's default): a share file's defaults are
  not Samba's (`read_only` is false unless said), and the agent writes both lines;
- any other parameter the share model accepts as a raw option: `[options]` (which the
  node must allow with `allow_custom_options = true`);
- the rest is listed, not guessed at: parameters the model refuses in a share file (they
  run programs, change who the share's files belong to, or reach outside the share:
  `force user`, `guest ok`, `vfs objects`, `root preexec`, ...), and whole sections that
  are not file shares (`[homes]`, printers, a name the model refuses). A value with a
  Samba macro (`%U`, `%h`, ...) is one of them: the model refuses `%`, since what it
  stands for changes with the client; a `path` with one keeps its section in smb.conf.

`[global]` is never imported: the administrator's globals stay where they are (and
its share parameters keep applying to what the agent serves, except the two above).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.shares import MAX_OPTIONS, forbidden_option
from smbgw_agent.model.smbvalues import check_parameter_name, check_principal, check_share_name, safe_file_stem

_LINE = re.compile(r"^\s*([^=]+?)\s*=\s?(.*)$")
_SECTION = re.compile(r"^\[(.+)\]\s*$")
TABLE_KEYS = {"path": "path", "comment": "comment", "read only": "read_only", "browseable": "browseable",
              "valid users": "valid_users"}
NOT_FILE_SHARES = {"global", "homes", "printers", "print$", "ipc$"}
MACRO = "uses a Samba macro (%), which a share file cannot say"
# Samba's own defaults of the table keys the agent always writes (see the docstring).
SAMBA_DEFAULTS = {"read only": "Yes", "browseable": "Yes"}


@dataclass
class Section:
    name: str
    parameters: dict[str, str] = field(default_factory=dict)
    # What [global] sets for every share: what this section has where it says nothing.
    inherited: dict[str, str] = field(default_factory=dict)


@dataclass
class Imported:
    """One section's share file (`text`, None when it cannot be one) and what was left out."""

    name: str
    file: str
    text: str | None
    left_out: list[str] = field(default_factory=list)  # "parameter = value: why"
    uses_options: bool = False
    in_registry: bool = False  # defined in Samba's registry (`net conf`), not in a file


def parse_testparm(text: str) -> list[Section]:
    """`testparm -s` output as its sections, in order; parameter names lower-cased. Each
    section after `[global]` inherits `[global]`'s parameters."""
    sections: list[Section] = []
    inherited: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        found = _SECTION.match(line)
        if found:
            sections.append(Section(found.group(1), inherited=inherited))
            if found.group(1).lower() == "global":
                inherited = sections[-1].parameters
            continue
        pair = _LINE.match(raw)
        if pair and sections:
            sections[-1].parameters[" ".join(pair.group(1).lower().split())] = pair.group(2).strip()
    return sections


def split_list(value: str) -> list[str]:
    """A Samba list (`valid users`): items separated by commas or white space, an item
    with spaces in double quotes."""
    items, current, quoted = [], "", False
    for char in value:
        if char == '"':
            quoted = not quoted
        elif not quoted and (char == "," or char.isspace()):
            if current:
                items.append(current)
            current = ""
        else:
            current += char
    if current:
        items.append(current)
    return items


def toml_string(value: str) -> str:
    """A TOML basic string that reads back as exactly `value`."""
    out = ['"']
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _boolean(value: str) -> bool | None:
    lowered = value.lower()
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off"):
        return False
    return None


def to_share_file(section: Section, source: str) -> Imported:
    """The share file for one `testparm -s` section (see the module's docstring)."""
    name = section.name
    stem = safe_file_stem(name)
    imported = Imported(name, f"{stem}.toml", None)
    if name.lower() in NOT_FILE_SHARES:
        imported.left_out.append(f"[{name}]: not a file share; it stays in smb.conf")
        return imported
    if _boolean(section.parameters.get("printable", "no")):
        imported.left_out.append(f"[{name}]: a printer; it stays in smb.conf")
        return imported
    try:
        check_share_name(name)
    except FieldError as exc:
        imported.left_out.append(f"[{name}]: {exc}; it stays in smb.conf")
        return imported
    if not section.parameters.get("path"):
        imported.left_out.append(f"[{name}]: no path; it stays in smb.conf")
        return imported
    if "%" in section.parameters["path"]:
        imported.left_out.append(f"[{name}]: path {section.parameters['path']} {MACRO}; it stays in smb.conf")
        return imported
    lines = [f"# Imported by smbgwctl import from [{name}] of {source}"]
    if stem != name:
        lines.append(f"name = {toml_string(name)}")
    options: list[str] = []
    parameters = dict(section.parameters)
    for parameter, default in SAMBA_DEFAULTS.items():
        parameters.setdefault(parameter, section.inherited.get(parameter, default))
    for parameter, value in parameters.items():
        key = TABLE_KEYS.get(parameter)
        if key in ("read_only", "browseable"):
            flag = _boolean(value)
            if flag is None:
                imported.left_out.append(f"{parameter} = {value}: not yes or no")
            else:
                lines.append(f"{key} = {'true' if flag else 'false'}")
        elif key == "valid_users":
            users = []
            for item in split_list(value):
                try:
                    users.append(check_principal(item))
                except FieldError as exc:
                    # Dropping an item would admit users the section kept out (all of
                    # them, with an empty list): the share is not imported at all.
                    imported.left_out.append(f"[{name}]: valid users item {item!r}: {exc}; without it the share "
                                             "would admit more users, so it stays in smb.conf")
                    return imported
            lines.append(f"valid_users = [{', '.join(toml_string(u) for u in users)}]")
        elif key is not None:
            if "%" in value:
                imported.left_out.append(f"{parameter} = {value}: {MACRO}")
            else:
                lines.append(f"{key} = {toml_string(value)}")
        else:
            why = _option_refusal(parameter) or (MACRO if "%" in value else None)
            if why:
                imported.left_out.append(f"{parameter} = {value}: {why}")
            elif len(options) >= MAX_OPTIONS:
                imported.left_out.append(f"{parameter} = {value}: more than {MAX_OPTIONS} options")
            else:
                options.append(f"{toml_string(parameter)} = {toml_string(value)}")
    if options:
        imported.uses_options = True
        lines += ["", "[options]  # needs allow_custom_options = true in agent.toml", *options]
    imported.text = "\n".join(lines) + "\n"
    return imported


def _option_refusal(parameter: str) -> str | None:
    try:
        check_parameter_name(parameter)
    except FieldError as exc:
        return str(exc)
    if forbidden_option(parameter):
        return ("a share file may not set it (it runs programs, changes who owns the files, or reaches "
                "outside the share)")
    return None
