"""The agent.toml `[ad]` table: what it may say, every problem with its key.

    [ad]
    realm = "CORP.EXAMPLE.COM"
    workgroup = "CORP"
    join_user = "svc-smbgw-join"
    password_file = "/etc/smbgw/secrets/ad-join"   # or credential = "ad-join"
    ou = "OU=FileServers,DC=corp,DC=example,DC=com"
    dns_register = false
    idmap = { backend = "rid", range = [100000, 999999] }
    idmap_default_range = [3000, 7999]
    health_interval = "60s"
    rejoin_min_interval = "1h"
    fallback = "local"
    manage_krb5_conf = true
    leave_on_remove = false

Only the form of each value is checked here; what needs the node or the domain (the
password file's owner and mode, the domain controllers answering, the local users'
ids) is checked where it is used. The rules, and why:

- `realm`: the domain's DNS name in upper case. AD's Kerberos realm is its DNS name in
  capitals and Kerberos compares realms case-sensitively, so a lower-case spelling is
  refused with the spelling to write rather than folded quietly.
- `workgroup`: the domain's NetBIOS name (1 to 15 characters, none of ``\\ / : * ? " < >
  |``, not starting with '.'), in upper case. It also becomes part of smb.conf parameter
  names (``idmap config CORP : range``), which the agent writes with letters, digits,
  '-' and '_' only, so the other characters NetBIOS would allow are refused too.
- `join_user`: the account name alone (its sAMAccountName, at most 20 characters).
  ``user@REALM`` and ``DOMAIN\\user`` are refused: the join always authenticates in
  `realm`, and a second spelling of the domain here could only disagree with it. '%'
  is refused because Samba's tools read ``user%password``.
- `password_file` or `credential`, exactly one: where the join password comes from, a
  file (an absolute path) or a systemd credential of the agent's unit.
- `ou`: the distinguished name of the OU for the computer account, inside the domain
  (its DC= part is the realm's). Without it the account goes to the default container.
- `idmap`: the mapping of the domain's users and groups to ids: `rid` (from the RID,
  the same on every node without shared state), `ad` (the uidNumber/gidNumber the
  directory holds) or `autorid` (every domain, each in a slice of one range). Samba
  requires autorid on the default domain `*`, so with autorid its range *is* the
  default range and `idmap_default_range` must not be given.
- `idmap_default_range`: the ids of everything that is not the domain (BUILTIN, other
  domains), kept by the tdb backend.
- `fallback`: `local` (the default, as in the design's example) keeps the node serving
  its local passdb users and the domain identities winbind has cached while no domain
  controller answers; `none` has no such degraded mode, so an unreachable domain
  shows as a failure at once.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import REQUIRED, Table, typename
from smbgw_agent.model.idranges import IdRange

SECTION = "ad"
QUOTE = 60  # characters of a bad value quoted in a message

MAX_DNS_NAME = 253
MAX_DNS_LABEL = 63
MAX_NETBIOS = 15
NETBIOS_FORBIDDEN = '\\/:*?"<>|'
MAX_LOGON_NAME = 20  # sAMAccountName of a user: AD refuses longer ones
LOGON_NAME_FORBIDDEN = '"/\\[]:;|=,+*?<>@'
MAX_PATH = 4095
MAX_CREDENTIAL = 255
MAX_DN = 1024
MAX_TEXT = 1024  # cut-off before any closer look: a 1 MB value is refused by its length

BACKENDS = ("rid", "autorid", "ad")
FALLBACKS = ("none", "local")
MIN_ID = 1000
MAX_ID = 2**31 - 1
MIN_RANGE_SIZE = 1000
AUTORID_RANGESIZE = 100_000  # Samba's default `idmap config * : rangesize`
# autorid gives the BUILTIN domain a slice of its own, so the domain needs a second one;
# testparm refuses a smaller range ("needs to be at least twice as big as the rangesize").
MIN_AUTORID_SIZE = 2 * AUTORID_RANGESIZE

_CREDENTIAL = re.compile(r"[A-Za-z0-9_.-]+")
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*")


DEFAULT_RANGE = IdRange(3000, 7999)


@dataclass(frozen=True)
class IdmapSettings:
    """`[ad] idmap`: the backend of the domain (of every domain, for autorid) and its ids."""

    backend: str
    range: IdRange


@dataclass(frozen=True)
class AdSettings:
    """agent.toml `[ad]`, as `parse_agent_table` returned it.

    `password_file` / `credential`: where the join password comes from (exactly one is
    set); `ou`: the OU's DN for the computer account, None for the default container;
    `idmap_default_range`: the range of `idmap config * : tdb`, None with autorid (whose
    range is the default one); `health_interval`, `rejoin_min_interval`: seconds."""

    realm: str
    workgroup: str
    join_user: str
    idmap: IdmapSettings
    password_file: str | None = None
    credential: str | None = None
    ou: str | None = None
    dns_register: bool = False
    idmap_default_range: IdRange | None = DEFAULT_RANGE
    health_interval: float = 60.0
    rejoin_min_interval: float = 3600.0
    fallback: str = "local"
    manage_krb5_conf: bool = True
    leave_on_remove: bool = False

    def id_ranges(self) -> list[tuple[str, IdRange]]:
        """The ranges Samba hands out, each with the key agent.toml sets it with."""
        ranges = [("idmap.range", self.idmap.range)]
        if self.idmap_default_range is not None:
            ranges.append(("idmap_default_range", self.idmap_default_range))
        return ranges

    @classmethod
    def from_parsed(cls, parsed: Mapping[str, Any]) -> AdSettings:
        """The settings from `parse_agent_table`'s (JSON-compatible) result."""
        idmap = parsed["idmap"]
        default = parsed.get("idmap_default_range")
        known = {key: parsed[key] for key in cls.__dataclass_fields__ if key in parsed}
        known["idmap"] = IdmapSettings(idmap["backend"], IdRange(*idmap["range"]))
        known["idmap_default_range"] = None if default is None else IdRange(*default)
        return cls(**known)

    @classmethod
    def from_config(cls, sections: Mapping[str, Any]) -> AdSettings:
        """The validated `[ad]` table; ValueError when agent.toml has none (the node is
        not a domain member: ask `SECTION in sections` first)."""
        data = sections.get(SECTION)
        if not isinstance(data, Mapping):
            raise ValueError("agent.toml has no [ad] table: this node is not a member of a domain")
        return cls.from_parsed(data)


# ---- the values ------------------------------------------------------------------------------


def _quoted(text: str) -> str:
    return repr(text[:QUOTE]) + ("..." if len(text) > QUOTE else "")


def _char(char: str) -> str:
    """A character as a message shows it: quoted if printable, else its code point."""
    return repr(char) if char.isprintable() else f"U+{ord(char):04X}"


def _text(value: object, example: str, max_length: int = MAX_TEXT) -> str:
    """A non-empty string without control characters, at most `max_length` long."""
    if not isinstance(value, str):
        raise FieldError(f"must be a string such as {example}, not {typename(value)}")
    if not value:
        raise FieldError(f"must not be empty: write e.g. {example}")
    if len(value) > max_length:
        raise FieldError(f"is too long ({len(value)} characters; at most {max_length})")
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise FieldError(f"contains the control character {_char(char)}")
    return value


def realm(value: object) -> str:
    """The domain's DNS name in upper case (`CORP.EXAMPLE.COM`)."""
    text = _text(value, '"CORP.EXAMPLE.COM"', MAX_DNS_NAME)
    if text.endswith(".") and text.rstrip("."):
        raise FieldError(f"{_quoted(text)}: write it without the trailing dot, \"{text.rstrip('.')}\"")
    for char in text:
        if not (char.isascii() and (char.isalnum() or char in ".-")):
            raise FieldError(f"{_quoted(text)} contains {_char(char)}: a realm is a DNS name of letters, digits, "
                             "'-' and '.'")
    labels = text.split(".")
    if len(labels) < 2:
        raise FieldError(f"{_quoted(text)} is one label: the realm is the domain's full DNS name in upper case, "
                         "e.g. \"CORP.EXAMPLE.COM\"")
    for label in labels:
        if not label:
            raise FieldError(f"{_quoted(text)} has an empty label (a '.' at the start or two in a row)")
        if len(label) > MAX_DNS_LABEL:
            raise FieldError(f"{_quoted(text)} has a label of {len(label)} characters; a DNS label has at most "
                             f"{MAX_DNS_LABEL}")
        if label.startswith("-") or label.endswith("-"):
            raise FieldError(f"{_quoted(text)}: the label {_quoted(label)} starts or ends with '-', which a DNS "
                             "name does not")
    if labels[-1].isdigit():
        raise FieldError(f"{_quoted(text)} looks like an IP address; the realm is the domain's DNS name")
    if text != text.upper():
        raise FieldError(f"{_quoted(text)} must be upper case (AD's Kerberos realm is its DNS name in capitals, "
                         f"and Kerberos compares realms case-sensitively): write \"{text.upper()}\"")
    return text


def workgroup(value: object) -> str:
    """The domain's NetBIOS name in upper case (`CORP`)."""
    if isinstance(value, str) and len(value) > MAX_NETBIOS:
        raise FieldError(f"{_quoted(value)} has {len(value)} characters; a NetBIOS name has at most {MAX_NETBIOS}")
    text = _text(value, '"CORP"', MAX_NETBIOS)
    for char in text:
        if char in NETBIOS_FORBIDDEN:
            raise FieldError(f"{_quoted(text)} contains {_char(char)}, which a NetBIOS name cannot hold (none of "
                             f"{' '.join(NETBIOS_FORBIDDEN)})")
    if text.startswith("."):
        raise FieldError(f"{_quoted(text)} starts with '.', which a NetBIOS name cannot")
    if text != text.strip():
        raise FieldError(f"{_quoted(text)} has leading or trailing spaces; write {_quoted(text.strip())}")
    for char in text:
        if not (char.isascii() and (char.isalnum() or char in "-_")):
            raise FieldError(f"{_quoted(text)} contains {_char(char)}: the workgroup becomes part of smb.conf "
                             f"parameter names (\"idmap config {text} : range\"), which the agent writes with "
                             "letters, digits, '-' and '_' only")
    if text != text.upper():
        raise FieldError(f"{_quoted(text)} must be upper case, as AD spells NetBIOS names: write \"{text.upper()}\"")
    return text


def join_user(value: object) -> str:
    """The account that joins the node, by its logon name alone (`svc-smbgw-join`)."""
    text = _text(value, '"svc-smbgw-join"')
    if "%" in text:
        raise FieldError(f"{_quoted(text)} contains '%', which Samba's tools read as user%password; the password "
                         "comes from password_file or credential")
    domain_part = next((char for char in text if char in "@\\/"), None)
    if domain_part is not None:
        name = text.split("@", 1)[0] if domain_part == "@" else re.split(r"[\\/]", text)[-1]
        hint = f"write {_quoted(name)}" if name and name.strip() == name else "write the account's logon name"
        raise FieldError(f"{_quoted(text)} names a domain too ({_char(domain_part)}): {hint}; the join always "
                         "authenticates in the realm of [ad] realm")
    for char in text:
        if char in LOGON_NAME_FORBIDDEN:
            raise FieldError(f"{_quoted(text)} contains {_char(char)}, which an AD logon name cannot hold (none of "
                             f"{' '.join(LOGON_NAME_FORBIDDEN)})")
    if text != text.strip():
        raise FieldError(f"{_quoted(text)} has leading or trailing spaces; write {_quoted(text.strip())}")
    if not text.strip("."):
        raise FieldError(f"{_quoted(text)}: an AD logon name is not periods only")
    if text.startswith("-"):
        raise FieldError(f"{_quoted(text)} starts with '-', which the join command would read as an option")
    if len(text) > MAX_LOGON_NAME:
        raise FieldError(f"{_quoted(text)} has {len(text)} characters; an AD logon name (the account's "
                         f"\"pre-Windows 2000\" name, sAMAccountName) has at most {MAX_LOGON_NAME}")
    return text


def password_file(value: object) -> str:
    """An absolute path to the file holding the join password. Only its form: the file
    (its owner, its mode, that it exists) is checked when the password is read."""
    text = _text(value, '"/etc/smbgw/secrets/ad-join"', MAX_PATH)
    if not text.startswith("/"):
        raise FieldError(f"{_quoted(text)} must be an absolute path, e.g. \"/etc/smbgw/secrets/ad-join\"")
    if text.endswith("/"):
        raise FieldError(f"{_quoted(text)} names a directory; the password is a file")
    if any(part in (".", "..") for part in text.split("/")):
        raise FieldError(f"{_quoted(text)} has '.' or '..' in it: write the path plainly, so that the directories "
                         "checked before the password is read are the ones it is read from")
    return text


def credential(value: object) -> str:
    """The name of a systemd credential of the agent's unit (`LoadCredential=NAME:...`).

    systemd accepts any printable ASCII name but '/' and ':' (a file name and an fd name
    at once); the agent keeps to letters, digits, '_', '-' and '.', which need no quoting
    or escaping in the unit file (where '%' is a specifier and a space separates)."""
    text = _text(value, '"ad-join"', MAX_CREDENTIAL)
    for char in text:
        if not (char.isascii() and (char.isalnum() or char in "_.-")):
            raise FieldError(f"{_quoted(text)} contains {_char(char)}: a credential name here holds letters, "
                             "digits, '_', '-' and '.'")
    if text in (".", ".."):
        raise FieldError(f"{text!r} is not a credential name")
    return text


def _chars(text: str) -> list[str]:
    """`text` as characters, an escape (a backslash and the character after it) as one."""
    chars = []
    index = 0
    while index < len(text):
        step = 2 if text[index] == "\\" else 1
        chars.append(text[index:index + step])
        index += step
    return chars


def _split_unescaped(text: str, separator: str) -> list[str]:
    """`text` split at every `separator` no backslash escapes (RFC 4514)."""
    parts: list[str] = []
    current: list[str] = []
    for char in _chars(text):
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescaped(text: str) -> str:
    """The characters of `text` that no backslash escapes."""
    return "".join(char for char in _chars(text) if len(char) == 1 and char != "\\")


def distinguished_name(text: str) -> list[list[tuple[str, str]]]:
    """An LDAP DN (RFC 4514) as its RDNs, each a list of (attribute type, value); a
    backslash escapes the character after it. Spaces after a ',' are allowed, as
    hand-written DNs have them; a ValueError says what is wrong."""
    if text.endswith("\\") and (len(text) - len(text.rstrip("\\"))) % 2:
        raise ValueError("ends with a lone backslash; escape a backslash as '\\\\'")
    rdns = []
    for rdn in _split_unescaped(text, ","):
        if not rdn.strip():
            raise ValueError("has an empty RDN (a ',' at the start, at the end or two in a row)")
        avas = []
        for ava in _split_unescaped(rdn.lstrip(" "), "+"):
            attribute, equals, content = ava.partition("=")
            if not equals:
                raise ValueError(f"{_quoted(ava)} is not type=value (e.g. OU=FileServers)")
            if not _ATTRIBUTE.fullmatch(attribute.strip(" ")):
                raise ValueError(f"{_quoted(attribute)} is not an attribute type (e.g. OU, CN, DC)")
            if not content.strip(" "):
                raise ValueError(f"{_quoted(ava)} has an empty value")
            for special in ';<>"':
                if special in _unescaped(content):
                    raise ValueError(f"{_quoted(ava)} has an unescaped {special!r}; write it as '\\{special}'")
            avas.append((attribute.strip(" "), content.strip(" ")))
        rdns.append(avas)
    return rdns


def ou(value: object) -> str:
    """The distinguished name of the OU that gets the computer account (the DN form, not
    the "Computers/Servers" path form the join command also knows)."""
    text = _text(value, '"OU=FileServers,DC=corp,DC=example,DC=com"', MAX_DN)
    if text != text.strip():
        raise FieldError(f"{_quoted(text)} has leading or trailing spaces")
    try:
        distinguished_name(text)
    except ValueError as exc:
        raise FieldError(f"{_quoted(text)} is not an LDAP distinguished name: {exc}") from None
    return text


def _domain_components(text: str) -> tuple[list[str], int]:
    """The trailing DC= values of a DN (lower case) and how many RDNs come before them."""
    rdns = distinguished_name(text)
    components: list[str] = []
    for rdn in reversed(rdns):
        if len(rdn) != 1 or rdn[0][0].casefold() != "dc":
            break
        components.insert(0, rdn[0][1].casefold())
    return components, len(rdns) - len(components)


def ou_problem(dn: str, realm_name: str) -> str | None:
    """Why the OU `dn` cannot hold a computer account of the domain `realm_name`, or None:
    an OU of the domain ends with the realm's labels as DC= components."""
    expected = ",".join(f"DC={label}" for label in realm_name.lower().split("."))
    components, before = _domain_components(dn)
    if components != realm_name.casefold().split("."):
        ending = ",".join(f"DC={part}" for part in components) if components else "no DC= part"
        return (f"{_quoted(dn)} is not inside the domain {realm_name}: it ends with {ending}, an OU of the domain "
                f"ends with {expected} (e.g. \"OU=FileServers,{expected}\")")
    if before == 0:
        return (f"{_quoted(dn)} is the domain itself; name the OU for the computer account, e.g. "
                f"\"OU=FileServers,{expected}\"")
    return None


def _number(number: int) -> str:
    """An integer for a message; TOML's are 64-bit, Python's are not."""
    return str(number) if abs(number) < 2**64 else f"{'-' if number < 0 else ''}a number beyond 2^64"


def id_range(value: object) -> IdRange:
    """`[low, high]`: two integers, low < high, within MIN_ID .. MAX_ID.

    The top is 2^31 - 1 although Samba's ids are 32-bit unsigned: many tools (and
    programs that store a uid in an int) read ids from 2^31 on as negative numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        shown = f"a list of {len(value)}" if isinstance(value, (list, tuple)) else typename(value)
        raise FieldError(f"must be [low, high], two integers such as [100000, 999999], not {shown}")
    for end in value:
        if isinstance(end, bool) or not isinstance(end, int):
            raise FieldError(f"must be [low, high], two integers such as [100000, 999999]; it holds "
                             f"{typename(end)}")
    low, high = value
    if low < MIN_ID:
        raise FieldError(f"starts at {_number(low)}; an idmap range starts at {MIN_ID} or above (the ids below are the "
                         "system's)")
    if high > MAX_ID:
        raise FieldError(f"ends at {_number(high)}; stay at or below {MAX_ID} (2^31 - 1): Samba's ids are 32-bit "
                         "unsigned, but many tools read ids from 2^31 on as negative numbers")
    if low >= high:
        raise FieldError(f"[{low}, {high}]: the low end must be below the high end")
    return IdRange(low, high)


def range_size_problem(backend: str, ids: IdRange) -> str | None:
    """Why `ids` is too small for `backend` ("tdb": the default range), or None."""
    if backend == "autorid":
        if ids.size < MIN_AUTORID_SIZE:
            return (f"{ids} holds {ids.size} ids; autorid needs at least {MIN_AUTORID_SIZE}: two slices of its "
                    f"range size {AUTORID_RANGESIZE}, one for the BUILTIN domain and one for the domain")
        return None
    if ids.size < MIN_RANGE_SIZE:
        why = {"rid": " (rid maps RID r to low + r: the range must reach past the highest RID of the domain)",
               "ad": " (it must hold every uidNumber and gidNumber the directory gives)"}.get(backend, "")
        return f"{ids} holds {ids.size} ids; at least {MIN_RANGE_SIZE}{why}"
    return None


def _as_list(ids: IdRange | None) -> list[int] | None:
    return None if ids is None else [ids.low, ids.high]


# ---- the table -------------------------------------------------------------------------------


def _idmap(table: Table, data: Mapping[str, Any]) -> tuple[str | None, IdRange | None]:
    """`idmap = { backend = ..., range = [...] }`: (backend, range), None where bad."""
    child = table.table("idmap")
    if "idmap" not in data:
        table.report("idmap", "required key is missing: write e.g. idmap = { backend = \"rid\", range = "
                              "[100000, 999999] } (rid, autorid or ad)")
        return None, None
    if not isinstance(data["idmap"], Mapping):
        return None, None
    backend = child.choice("backend", BACKENDS, REQUIRED)
    ids = child.value("range", id_range, None)
    if "range" not in child.data:
        child.report("range", "required key is missing: write e.g. range = [100000, 999999]")
    backend = backend if isinstance(backend, str) else None
    if backend is not None and ids is not None:
        problem = range_size_problem(backend, ids)
        if problem:
            child.report("range", problem)
            ids = None
    return backend, ids


def parse_agent_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    defaults = AdSettings(realm="", workgroup="", join_user="", idmap=IdmapSettings("rid", DEFAULT_RANGE))
    realm_name = table.value("realm", realm, REQUIRED)
    parsed: dict[str, Any] = {
        "realm": realm_name,
        "workgroup": table.value("workgroup", workgroup, REQUIRED),
        "join_user": table.value("join_user", join_user, REQUIRED),
        "password_file": table.value("password_file", password_file, None),
        "credential": table.value("credential", credential, None),
        "ou": table.value("ou", ou, None),
        "dns_register": table.boolean("dns_register", defaults.dns_register),
    }
    if "password_file" not in data and "credential" not in data:
        table.report("password_file", "required key is missing: write where the join password comes from, "
                                      "password_file = \"/etc/smbgw/secrets/ad-join\" or credential = \"ad-join\"")
    elif "password_file" in data and "credential" in data:
        table.report("credential", "password_file is given too: the join password comes from one place, keep "
                                   "password_file or credential")
    if isinstance(parsed["ou"], str) and isinstance(realm_name, str):
        problem = ou_problem(parsed["ou"], realm_name)
        if problem:
            table.report("ou", problem)

    backend, ids = _idmap(table, data)
    given = "idmap_default_range" in data
    # None when given but bad (already reported): no further checks on it.
    default_range: IdRange | None = table.value("idmap_default_range", id_range, None if given else DEFAULT_RANGE)
    if backend == "autorid":
        if given:
            table.report("idmap_default_range", "is not used with idmap.backend = \"autorid\": Samba runs autorid "
                                                "as the default backend, so idmap.range is the default range; "
                                                "remove idmap_default_range")
        default_range = None
    elif default_range is not None and given:
        problem = range_size_problem("tdb", default_range)
        if problem:
            table.report("idmap_default_range", problem)
            default_range = None
    if backend not in (None, "autorid") and ids is not None and default_range is not None \
            and ids.overlaps(default_range):
        if given:
            table.report("idmap_default_range", f"{default_range} overlaps idmap.range {ids}: Samba needs disjoint "
                                                "ranges (an id in both would belong to two domains); move one")
        else:
            table.report("idmap.range", f"{ids} overlaps the default idmap_default_range {default_range}: Samba "
                                        "needs disjoint ranges; move idmap.range or set idmap_default_range "
                                        "to a range outside it")
    parsed["idmap"] = {"backend": backend, "range": _as_list(ids)}
    parsed["idmap_default_range"] = _as_list(default_range)
    parsed.update({
        "health_interval": table.duration("health_interval", defaults.health_interval, minimum=10.0,
                                          maximum=86400.0),
        "rejoin_min_interval": table.duration("rejoin_min_interval", defaults.rejoin_min_interval, minimum=300.0,
                                              maximum=30 * 86400.0),
        "fallback": table.choice("fallback", FALLBACKS, defaults.fallback),
        "manage_krb5_conf": table.boolean("manage_krb5_conf", defaults.manage_krb5_conf),
        "leave_on_remove": table.boolean("leave_on_remove", defaults.leave_on_remove),
    })
    table.done()
    return parsed


# ---- the node's own ids ----------------------------------------------------------------------


@dataclass(frozen=True)
class LoginDefs:
    """The id ranges useradd allocates local users and groups from (/etc/login.defs);
    the defaults are shadow's and Debian's."""

    uid_min: int = 1000
    uid_max: int = 60000
    gid_min: int = 1000
    gid_max: int = 60000


_LOGIN_DEFS_NAMES = {"UID_MIN": "uid_min", "UID_MAX": "uid_max", "GID_MIN": "gid_min", "GID_MAX": "gid_max"}
_C_SPACE = " \t\n\v\f\r"
_FGETS = 1023  # shadow reads login.defs with fgets() into a 1024-byte buffer
_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _c_ulong(text: str) -> int | None:
    """`text` as shadow's getulong() takes it (strtoul with base 0: decimal, 0x hex, 0
    octal, the whole value a number), or None. A '-' sign, which strtoul would wrap
    around to a huge number, counts as unparsable."""
    body = text.lstrip(_C_SPACE)
    body = body.removeprefix("+")
    if body[:2] in ("0x", "0X"):
        digits, base = body[2:], 16
    elif body.startswith("0"):
        digits, base = body, 8
    else:
        digits, base = body, 10
    if not digits or any(char not in _DIGITS[base] for char in digits):
        return None
    number = int(digits, base)
    return number if number < 2**64 else None


def _fgets_lines(text: str) -> list[str]:
    """`text` in the pieces fgets() returns: up to a newline, at most _FGETS characters,
    each cut at a NUL (where the C string ends)."""
    pieces = []
    position = 0
    while position < len(text):
        newline = text.find("\n", position, position + _FGETS)
        end = newline + 1 if newline >= 0 else min(position + _FGETS, len(text))
        pieces.append(text[position:end].split("\0", 1)[0])
        position = end
    return pieces


def parse_login_defs(text: str) -> LoginDefs:
    """UID_MIN, UID_MAX, GID_MIN and GID_MAX of /etc/login.defs, read the way shadow's
    useradd reads them: `NAME value` a line, '#' comments, the last of a repeated name
    wins, a value that is not a number means the default. Never raises: anything else in
    the file (garbage, other names, any size) is skipped, as useradd skips it.

    Debian's adduser takes its ranges from /etc/adduser.conf instead; its defaults lie
    inside these."""
    values: dict[str, str] = {}
    for piece in _fgets_lines(text):
        line = piece.rstrip(_C_SPACE).lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        name, separator, rest = _split_field(line)
        if not separator:
            continue
        value = rest.lstrip(" \"\t").split('"', 1)[0]
        if name in _LOGIN_DEFS_NAMES:
            values[name] = value
    defaults = LoginDefs()
    found: dict[str, int] = {}
    for name, field in _LOGIN_DEFS_NAMES.items():
        number = _c_ulong(values[name]) if name in values else None
        found[field] = getattr(defaults, field) if number is None else number
    return LoginDefs(**found)


def _split_field(line: str) -> tuple[str, str, str]:
    """(first field, the separating space or tab, the rest), like strcspn(" \\t")."""
    for index, char in enumerate(line):
        if char in " \t":
            return line[:index], char, line[index + 1:]
    return line, "", ""


@dataclass(frozen=True)
class IdConflict:
    """An idmap range that crosses the node's own ids. `in_use`: ids a local account or
    group has now (a domain user mapped there would own its files); otherwise the range
    only lies where useradd will allocate (a local user created later could collide)."""

    key: str
    message: str
    in_use: bool


SHOWN_IDS = 5


def _inside(ids: IdRange, used: Sequence[int]) -> list[int]:
    """The entries of the sorted `used` within `ids`."""
    return list(used[bisect_left(used, ids.low):bisect_right(used, ids.high)])


def local_id_conflicts(ranges: Sequence[tuple[str, IdRange]], used_uids: Iterable[int], used_gids: Iterable[int],
                       login_defs: LoginDefs) -> list[IdConflict]:
    """Every way the idmap `ranges` (key, range; `AdSettings.id_ranges()`) cross the ids
    the node uses itself: the uids and gids of its local accounts and groups (read from
    /etc/passwd and /etc/group by the caller) and the ranges useradd allocates from."""
    uids = sorted(set(used_uids))
    gids = sorted(set(used_gids))
    conflicts = []
    for key, ids in ranges:
        for kind, used, owner in (("uid", uids, "account"), ("gid", gids, "group")):
            inside = _inside(ids, used)
            if inside:
                shown = ", ".join(map(str, inside[:SHOWN_IDS])) + (", ..." if len(inside) > SHOWN_IDS else "")
                plural = "s" if len(inside) > 1 else ""
                conflicts.append(IdConflict(key, (
                    f"{ids} holds {len(inside)} {kind}{plural} of local {owner}s ({shown}): a domain "
                    f"{'user' if kind == 'uid' else 'group'} mapped there would own their files; move the range "
                    "past them"), True))
        crossed = [f"{name} {low}-{high}" for name, low, high in (
            ("UID_MIN..UID_MAX", login_defs.uid_min, login_defs.uid_max),
            ("GID_MIN..GID_MAX", login_defs.gid_min, login_defs.gid_max),
        ) if low <= high and ids.overlaps(IdRange(low, high))]
        if crossed:
            top = max(login_defs.uid_max, login_defs.gid_max)
            conflicts.append(IdConflict(key, (
                f"{ids} overlaps {' and '.join(crossed)} of /etc/login.defs, where useradd picks the ids of new "
                "local users and groups: one created later could get an id a domain user or group has; move the "
                f"range above {top}"), False))
    return conflicts
