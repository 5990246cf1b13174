"""Generated input for the property tests: arbitrary TOML, and share files that are
small edits of good ones or carry values chosen to hurt.

Hypothesis explores these; the tests state what must hold for every one of them. The
arbitrary documents reach every parser; the mutations stay close enough to a real share
file that most of them get past TOML and exercise the share model, the plugins' tables
and, when a mutation happens to stay valid, the whole apply path.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

KEYS = st.one_of(
    st.sampled_from([
        "name", "path", "mode", "comment", "read_only", "browseable", "valid_users", "node",
        "options", "quota", "ha", "backup", "agent", "samba", "metrics", "allowed_roots",
        "shares_dir", "resync_interval", "security_profile", "listen", "require_mounts",
        "strict_path_owners", "pass_timeout", "workgroup", "tls_cert",
    ]),
    st.text(min_size=1, max_size=12),
)
SCALARS = st.one_of(
    st.text(max_size=40), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["/srv/smb/x", "/etc", "../x", "1s", "60s"]),
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12,
)


def toml_key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else json.dumps(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's, except that JSON writes a character beyond the BMP as
        # a surrogate pair, which TOML refuses: leave those literal. DEL must be escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(tables: dict[str, Any]) -> str:
    lines = []
    for key, value in tables.items():
        if isinstance(value, dict) and value:
            lines.append(f"[{toml_key(key)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()]
        else:
            lines.insert(0, f"{toml_key(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=8).map(toml_document)


# ---- share files close to good ones ---------------------------------------------------------------

GOOD_SHARE = """\
path = "/srv/smb/{name}"
comment = "Generated {name}"
read_only = false
browseable = true
valid_users = ["root", "@staff"]

[options]
"strict sync" = "yes"
"""

# Values an attacker, a broken script or a tired administrator would write.
HOSTILE_VALUES: dict[str, list[Any]] = {
    "name": ["plain", "PLAIN", "global", "homes", "printers", "IPC$", "x" * 300, "a\nb", "a]", "[a", "../x",
             "a;b", "ünïcødé", "", " ", "a\tb", "\x1b[31mred"],
    "path": ["/etc", "/srv/smb/../../etc", "/srv/smb/plain", "/srv/smb/escape", "/srv/smb/" + "d" * 5000,
             "srv/smb/x", "/srv/smb/a\nb", "/srv/smb/missing/deeper", "/", "", "/srv/smb/gen/../plain"],
    "comment": ["x\n[global]\ninclude = /etc/passwd", "c" * 100_000, "%S %U %m", "\\", "a\x00b", "\x1b]0;x\x07"],
    "valid_users": [["root\nadmin"], [""], ["@" + "g" * 500], [f"user{i}" for i in range(5000)], "root"],
    "read_only": ["yes", 1, 0, "true", [], {}],
    "browseable": ["no", None, 2],
    "mode": ["native", "lxc", "vm", "jail", "", "NATIVE"],
    "node": ["", "n1", "other", "a" * 300, "a b", "../n"],
    "options": [{"include": "/etc/passwd"}, {"root preexec": "rm -rf /"}, {"path": "/etc"}, {"vfs objects": "x"},
                {"": "x"}, {"a\nb": "c"}, {"comment": "x"}, {"strict sync": "x\n[global]"},
                {f"p{i}": "v" for i in range(2000)}, {"dfree command": "/bin/true"}, {"wide links": "yes"}],
}


def _toml_line(key: str, value: Any) -> str:
    if value is None:
        return f"{toml_key(key)} ="  # a key without a value: a syntax error
    return f"{toml_key(key)} = {toml_value(value)}"


@st.composite
def hostile_share(draw: st.DrawFn) -> bytes:
    """A good share file with some keys set to hostile values (and sometimes repeated)."""
    lines = GOOD_SHARE.format(name="gen").splitlines()
    head, tail = lines[:5], lines[5:]
    for key in draw(st.lists(st.sampled_from(sorted(HOSTILE_VALUES)), min_size=1, max_size=4)):
        value = draw(st.sampled_from(HOSTILE_VALUES[key]))
        if key == "options" and isinstance(value, dict):
            tail = ["[options]", *(_toml_line(k, v) for k, v in value.items())]
            continue
        line = _toml_line(key, value)
        head = [entry for entry in head if not entry.startswith(f"{key} =")] if draw(st.booleans()) else head
        head.insert(draw(st.integers(0, len(head))), line)
    return ("\n".join([*head, "", *tail]) + "\n").encode("utf-8", errors="surrogatepass")


@st.composite
def mutated_share(draw: st.DrawFn) -> bytes:
    """A good share file with a few byte-level edits: flipped, inserted, deleted, cut off,
    lines swapped or repeated -- what a bad copy, a crash while saving or a typo leaves."""
    raw = bytearray(GOOD_SHARE.format(name="gen").encode())
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "swap", "repeat"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if edit == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif edit == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b'"', b"[", b"]", b"=", b"\n", b"\\", b"'''", b"\xff", b"\x00", b"#", b".", b"{"]))
        elif edit == "delete":
            del raw[at:at + draw(st.integers(1, 10))]
        elif edit == "truncate":
            del raw[at:]
        else:
            lines = bytes(raw).split(b"\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if edit == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(j, lines[i])
            raw = bytearray(b"\n".join(lines))
    return bytes(raw)


@st.composite
def free_text_share(draw: st.DrawFn) -> bytes:
    """A good share file whose comment and one option value are any text at all: what
    most edits are, and what must come out of rendering as exactly one line each."""
    comment = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
    text = GOOD_SHARE.format(name="gen").replace('"Generated gen"', toml_value(comment))
    value = draw(st.sampled_from(["yes", "no", "True", "0"]) | st.text(max_size=40))
    return text.replace('"strict sync" = "yes"', f'"strict sync" = {toml_value(value)}').encode(
        "utf-8", errors="surrogatepass")


SHARE_FILES = st.one_of(
    mutated_share(), hostile_share(), free_text_share(),
    DOCUMENTS.map(lambda text: text.encode("utf-8", errors="surrogatepass")),
)
