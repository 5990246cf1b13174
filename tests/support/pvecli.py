"""TEST STAND-IN support (never shipped): the command-line conventions Proxmox's Perl
tools share (`pct`, `qm`: PVE::CLIHandler over PVE::JSONSchema), for their test
stand-ins.

- Arguments: Getopt::Long as PVE::JSONSchema::get_options sets it up: `-opt` and
  `--opt`, `--opt=value` or `--opt value`, unique abbreviations, options anywhere among
  the positional arguments ("permute"), `--` ends the options; a boolean option takes an
  optional value (`1|on|yes|true`, `0|off|no|false`).
- Errors: a parameter error is PVE::Exception code 400: ``400 MESSAGE``, one
  ``key: reason`` line per parameter, then the usage line; anything else a tool `die`s
  with is printed as is. Both exit 255.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

EXIT_ERROR = 255
BOOL, STR, INT, NUM = "boolean", "string", "integer", "number"
MAX_VMID = 999999999


class CliError(Exception):
    """What the real tool `die`s with: printed to stderr as is, exit 255."""


class ParamError(CliError):
    """A PVE::Exception with code 400: the message, per-key errors, then the usage line."""

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        self.errors = errors or {}
        self.usage = ""
        super().__init__(message)

    def render(self) -> str:
        text = f"400 {self.args[0]}"
        text += "".join(f"{key}: {reason}\n" for key, reason in self.errors.items())
        return text + self.usage


@dataclass(frozen=True)
class Command:
    """One subcommand: its positional arguments (as in the tool's $cmddef) and options."""

    args: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)
    optional_args: tuple[str, ...] = ()


def parse_boolean(value: str) -> int | None:
    """PVE::JSONSchema::parse_boolean."""
    if re.fullmatch(r"1|on|yes|true", value, re.IGNORECASE):
        return 1
    if re.fullmatch(r"0|off|no|false", value, re.IGNORECASE):
        return 0
    return None


def _match_option(name: str, options: Mapping[str, str]) -> str | None:
    """Getopt::Long's default: exact name, else a unique abbreviation."""
    if name in options:
        return name
    candidates = [option for option in options if option.startswith(name)]
    return candidates[0] if len(candidates) == 1 else None


@dataclass(frozen=True)
class Cli:
    """One tool's subcommands (`commands`), with the minima and enumerations of its
    options' schema."""

    tool: str
    commands: Mapping[str, Command]
    minima: Mapping[str, int] = field(default_factory=dict)
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def usage_line(self, name: str) -> str:
        command = self.commands[name]
        args = " ".join(f"[<{a}>]" if a in command.optional_args else f"<{a}>" for a in command.args)
        return f"{self.tool} {name} {args}{' [OPTIONS]' if command.options else ''}\n"

    def parse_argv(self, name: str, argv: Sequence[str]) -> dict[str, object]:
        """Options and positional arguments of one subcommand, the way get_options reads them."""
        command = self.commands[name]
        opts, rest = self._read(command, list(argv))
        positional = list(command.args)
        for index, arg_name in enumerate(positional):
            if arg_name == "extra-args":
                opts[arg_name] = rest[index:]
                rest = rest[:index]
                break
            if index >= len(rest):
                if arg_name not in command.optional_args:
                    raise ParamError("not enough arguments\n")
                break
            opts[arg_name] = rest[index]
        if len(rest) > len([a for a in positional if a != "extra-args"]):
            raise ParamError("too many arguments\n")
        errors: dict[str, str] = {}
        for key, raw in list(opts.items()):
            if key != "extra-args":
                self._check(key, str(raw), command, opts, errors)
        if errors:
            raise ParamError("Parameter verification failed.\n", errors)
        return opts

    @staticmethod
    def _read(command: Command, args: list[str]) -> tuple[dict[str, object], list[str]]:
        opts: dict[str, object] = {}
        rest: list[str] = []
        failed = False
        while args:
            arg = args.pop(0)
            if arg == "--":
                rest.extend(args)
                break
            found = re.fullmatch(r"--?([A-Za-z][\w-]*)(?:=(.*))?", arg, re.DOTALL)
            if not found:
                rest.append(arg)  # permute: options may follow the arguments
                continue
            option = _match_option(found.group(1), command.options)
            if option is None:
                sys.stderr.write(f"Unknown option: {found.group(1).lower()}\n")
                failed = True
                continue
            value = found.group(2)
            if command.options[option] == BOOL:
                if value is None:
                    value = args.pop(0) if args and not args[0].startswith("-") else ""
            elif value is None:
                if not args:
                    sys.stderr.write(f"Option {option} requires an argument\n")
                    failed = True
                    continue
                value = args.pop(0)
            opts[option] = value
        if failed:
            raise ParamError("unable to parse option\n")
        return opts, rest

    def _check(self, key: str, text: str, command: Command, opts: dict[str, object], errors: dict[str, str]) -> None:
        kind = "vmid" if key in ("vmid", "newid") else command.options.get(key, STR)
        if kind == BOOL:
            parsed = parse_boolean(text if text else "1")
            if parsed is None:
                raise ParamError("unable to parse boolean option\n")
            opts[key] = parsed
        elif kind in (INT, "vmid"):
            if not re.fullmatch(r"[+-]?\d+", text):
                errors[key] = f"type check ('integer') failed - got '{text}'"
                return
            number = int(text)
            minimum = 100 if kind == "vmid" else self.minima.get(key)
            if kind == "vmid" and number > MAX_VMID:
                errors[key] = f"value must have a maximum value of {MAX_VMID}"
            elif minimum is not None and number < minimum:
                errors[key] = f"value must have a minimum value of {minimum}"
            opts[key] = number
        elif kind == NUM:
            if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
                errors[key] = f"type check ('number') failed - got '{text}'"
        elif key in self.enums and text not in self.enums[key]:
            errors[key] = f"value '{text}' does not have a value in the enumeration '{', '.join(self.enums[key])}'"
