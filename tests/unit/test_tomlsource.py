"""Reading input files defensively: what is refused, and where errors point (file:line)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from smbgw_agent.model.errors import Problem
from smbgw_agent.model.tomlsource import (
    MAX_FILE_BYTES,
    MAX_KEY_DEPTH,
    InputFileError,
    display_key,
    parse_toml,
    read_toml,
)

FILE = Path("/etc/smbgw/shares.d/finance.toml")

DOC = """\
# a share
path = "/tank/finance"
comment = "Finance team"
"quoted key" = 1
valid_users = ["a", "b"]

[quota]
size = "500G"  # trailing comment
warn_percent = 85

[ "ha" ]
vip = "192.168.10.50/24"
"""


def parse(text: str | bytes) -> dict[str, object]:
    raw = text.encode() if isinstance(text, str) else text
    return parse_toml(FILE, raw).data


def refused(text: str | bytes) -> Problem:
    raw = text.encode() if isinstance(text, str) else text
    with pytest.raises(InputFileError) as info:
        parse_toml(FILE, raw)
    problem = info.value.problem
    assert problem.file == FILE
    assert str(FILE) in str(info.value)
    return problem


def test_parse_gives_data_and_lines() -> None:
    doc = parse_toml(FILE, DOC.encode())
    assert doc.data["path"] == "/tank/finance"
    assert doc.data["quota"] == {"size": "500G", "warn_percent": 85}
    assert doc.line_of("", "path") == 2
    assert doc.line_of("", "comment") == 3
    assert doc.line_of("", "quoted key") == 4
    assert doc.line_of("quota") == 7
    assert doc.line_of("", "quota") == 7  # a top-level key that is a table: its header
    assert doc.line_of("quota", "size") == 8
    assert doc.line_of("quota", "warn_percent") == 9
    assert doc.line_of("ha", "vip") == 12
    assert doc.line_of("", "missing") is None
    assert doc.line_of("quota", "path") is None


@pytest.mark.parametrize(("text", "table"), [
    ('["{"]\nx = 1\n', "{"),
    ('[ quota . "a.b" ]\nx = 1\n', "quota.a.b"),
    ("['sp ace']\nx = 1\n", "sp ace"),
    ('[[ "list" ]]\nx = 1\n', "list"),
])
def test_every_table_header_has_its_line(text: str, table: str) -> None:
    """Found by the generated-input suite: a header with a quoted key holding other
    characters than letters, digits, `_` and `-` was not indexed, so problems about it had
    no line."""
    doc = parse_toml(FILE, text.encode())
    assert doc.line_of(table) == 1
    assert doc.line_of(table, "x") == 2


def test_problem_names_file_key_and_line() -> None:
    doc = parse_toml(FILE, DOC.encode())
    problem = doc.problem("must be a size", "quota", "size")
    assert (problem.file, problem.key, problem.line) == (FILE, "quota.size", 8)
    assert str(problem) == f"{FILE}:8: quota.size: must be a size"
    assert problem.to_dict() == {
        "file": str(FILE), "key": "quota.size", "line": 8, "message": "must be a size", "security": False,
    }


def test_problem_keys_are_shown_safely() -> None:
    doc = parse_toml(FILE, b'"evil\\nkey\\u001b[31m" = 1\n')
    problem = doc.problem("unknown key", key="evil\nkey\x1b[31m")
    assert problem.key is not None
    assert "\n" not in problem.key and "\x1b" not in problem.key
    assert "\n" not in str(problem)
    assert display_key("plain_key") == "plain_key"
    assert display_key("x" * 500).startswith("'xxx")
    assert len(display_key("x" * 500)) < 140


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('path = "/tank/x\n', 1),
        ('path = "/tank/x"\ncomment = \n', 2),
        ('path = "/tank/x"\n\n[quota\nsize = 1\n', 3),
        ('path = "/tank/x"\npath = "/tank/y"\n', 2),
        ("a = 1\nb = 2\nc = [1, 2\n", 3),
        ("a = 1\nb = 2\nc = [1, 2", 3),
        ('a = 1\nb = """\nnever closed\n\n', 4),
        ("x = 1979-13-99\n", 1),
        ("= 1\n", 1),
    ],
)
def test_syntax_errors_have_line(text: str, line: int) -> None:
    problem = refused(text)
    assert problem.message.startswith("TOML syntax error")
    assert problem.line == line
    assert f"{FILE}:{line}:" in str(problem)
    assert "(at line" not in problem.message  # the position is in `line`, not repeated


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"path = \"/tank/x\"\x00\n", "NUL"),
        (b"\x00", "NUL"),
        (b"path = \"\xff\xfe\"\n", "UTF-8"),
        ("path = 1\n".encode("utf-16"), "NUL"),
        (b"\xc3\x28", "UTF-8"),
    ],
)
def test_binary_input_refused(raw: bytes, reason: str) -> None:
    assert reason in refused(raw).message


def test_integer_beyond_python_limit_is_an_input_error() -> None:
    # int() refuses more than 4300 digits with a ValueError that tomllib lets through.
    assert "cannot be read" in refused("size = " + "1" * 5000 + "\n").message
    assert parse("size = 0x" + "f" * 5000 + "\n")["size"] == (1 << 20000) - 1  # no limit in base 16


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 5000 + "]" * 5000,
        "a = " + "{b = " * 3000 + "1" + "}" * 3000,
        "a" + ".b" * MAX_KEY_DEPTH + " = 1",
        # tomllib needs O(depth²) memory for a dotted key: 200 KB of `a.b.b...` took
        # gigabytes before the check. 3000 parts stay affordable should the check regress.
        "a" + ".b" * 3000 + " = 1",
        "[a" + ".b" * 10_000 + "]",
        "[[a" + ".b" * 10_000 + "]]",
        "x = {y" + " . 'z'" * 100 + " = 1}",
        "x = [{y" + '."z"' * 100 + " = 1}]",
        'path = "/tank/x"\n\n' + "a" + ".b" * 50 + " = 1\n",
    ],
    ids=["arrays", "inline-tables", "dotted-limit", "dotted-3000", "header", "array-header", "inline-literal",
         "inline-quoted", "later-line"],
)
def test_deep_nesting_refused_quickly(text: str) -> None:
    started = time.monotonic()
    problem = refused(text)
    assert time.monotonic() - started < 2.0
    assert "too deep" in problem.message


def test_deep_key_line_is_reported() -> None:
    assert refused('path = "/tank/x"\n\n' + "a" + ".b" * 50 + " = 1\n").line == 3


def test_dotted_keys_up_to_the_limit_are_fine() -> None:
    data = parse("a" + ".b" * (MAX_KEY_DEPTH - 1) + " = 1\n")
    for _ in range(MAX_KEY_DEPTH - 1):
        assert isinstance(data, dict)
        data = data["a"] if "a" in data else data["b"]  # type: ignore[assignment]
    assert data == {"b": 1}
    assert parse('keep = { hourly = 24, daily = 14 }\nquota.size = "1G"\n')["quota"] == {"size": "1G"}
    # Dots inside ordinary values are not keys.
    assert parse('comment = "version 1.2.3.4 of www.example.org"\npath = "/tank/a.b.c"\n')["path"] == "/tank/a.b.c"


@pytest.mark.parametrize(
    "text",
    [
        ("a." * 15 + "a x ") * 25_000,
        ("abcdefghij" * 100 + " ") * 900,
        '"' + '\\"' * 400_000,
        ('"a".' * 15 + '"a" ') * 14_000,
        ("'" + "a" * 1000 + ".") * 900,
        "." * 900_000,
    ],
    ids=["short-runs", "long-words", "escaped-quotes", "quoted-runs", "literal-runs", "dots"],
)
def test_deep_key_check_is_linear_on_hostile_input(text: str) -> None:
    started = time.monotonic()
    with pytest.raises(InputFileError):
        parse_toml(FILE, text.encode())
    assert time.monotonic() - started < 3.0


# ---- reading files -----------------------------------------------------------------


def test_read_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "finance.toml"
    path.write_text(DOC)
    doc = read_toml(path)
    assert doc.path == path
    assert doc.data["path"] == "/tank/finance"


def test_read_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    link = tmp_path / "link.toml"
    link.symlink_to("/etc/shadow")
    dangling = tmp_path / "dangling.toml"
    dangling.symlink_to(tmp_path / "nowhere")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    closed = tmp_path / "closed.toml"
    closed.write_text('path = "/tank/x"\n')
    closed.chmod(0)
    big = tmp_path / "big.toml"
    with open(big, "wb") as handle:
        handle.truncate(10 * 1024 * 1024)
    expected = {
        missing: "does not exist",
        directory: "is a directory",
        link: "symbolic link (to /etc/shadow)",
        dangling: "symbolic link",
        fifo: "not a regular file",
        closed: "not readable",
        big: "too large",
    }
    for path, reason in expected.items():
        with pytest.raises(InputFileError) as info:
            read_toml(path)
        assert info.value.problem.file == path
        assert reason in info.value.problem.message, (path, info.value.problem)


def test_size_limit_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "limit.toml"
    path.write_bytes(b"# " + b"x" * 98 + b"\n")  # 101 bytes
    assert read_toml(path, max_bytes=101).data == {}
    with pytest.raises(InputFileError, match="too large"):
        read_toml(path, max_bytes=100)
    assert MAX_FILE_BYTES >= 64 * 1024  # room for any real share file


def _stale_lstat(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """lstat as it was a moment before: a small regular file (what the reader sized by)."""
    real = os.lstat

    def stale(path: str | os.PathLike[str]) -> os.stat_result:
        info = real(path)
        fields = list(info)
        fields[0], fields[6] = 0o100644, size  # st_mode, st_size
        return os.stat_result(fields)

    monkeypatch.setattr(os, "lstat", stale)


def test_a_file_that_grew_after_its_stat_is_read_to_the_limit_and_no_further(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read is sized by the stat, but a file written meanwhile is read on, in chunks,
    up to one byte past the limit: never more, and never cut short where it fits."""
    grown = tmp_path / "grown.toml"
    grown.write_bytes(b"# " + b"x" * 200_000 + b"\npath = \"/tank/x\"\n")
    _stale_lstat(monkeypatch, 10)
    assert read_toml(grown, max_bytes=300_000).data == {"path": "/tank/x"}
    with pytest.raises(InputFileError, match="too large"):
        read_toml(grown, max_bytes=150_000)


def test_a_fifo_swapped_in_after_the_stat_is_refused_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "swapped.toml"
    os.mkfifo(fifo)
    _stale_lstat(monkeypatch, 10)
    with pytest.raises(InputFileError, match="not a regular file"):
        read_toml(fifo)


# ---- fuzz --------------------------------------------------------------------------

SEED_TEXTS = [DOC, 'path = "/tank/x"\n[options]\n"hide dot files" = true\n', "a.b.c = 1\n[t]\nx = [1, {y = 2}]\n"]


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        position = rng.randrange(len(data) + 1)
        if op < 0.4 and data:
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif op < 0.7:
            data[position:position] = rng.choice(
                [b"[", b"]", b"\"", b"'", b"=", b".", b"\n", b"\\", b"{", b"}", b"#", b"\x00", b"\xe2\x80\xa8",
                 b"'''", b'"""', b"\\u0000", b"9" * 50]
            )
        elif data:
            del data[position: position + rng.randint(1, 5)]
    return bytes(data)


def _random_unicode(rng: random.Random, length: int) -> str:
    pools = [
        lambda: chr(rng.randrange(0x20, 0x7F)),
        lambda: chr(rng.randrange(0, 0x20)),
        lambda: chr(rng.choice([0x85, 0x2028, 0x2029, 0x200B, 0x202E, 0xFEFF, 0x7F])),
        lambda: chr(rng.randrange(0xA0, 0x3000)),
        lambda: rng.choice(["=", "[", "]", '"', "'", "\n", ".", "#", "{", "}", ",", "\\"]),
    ]
    return "".join(rng.choice(pools)() for _ in range(length))


def test_fuzz_parse_toml_raises_only_input_errors() -> None:
    rng = random.Random(20240611)
    parsed = refused_count = 0
    for round_ in range(3000):
        kind = round_ % 3
        if kind == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        elif kind == 1:
            raw = _random_unicode(rng, rng.randint(0, 200)).encode("utf-8", "surrogatepass")
        else:
            raw = _mutate(rng, rng.choice(SEED_TEXTS).encode())
        try:
            doc = parse_toml(FILE, raw)
        except InputFileError as exc:
            refused_count += 1
            assert exc.problem.file == FILE
            assert exc.problem.message
            assert "\n" not in str(exc.problem)
        else:
            parsed += 1
            assert isinstance(doc.data, dict)
            for key in doc.data:
                doc.line_of("", key)  # never raises
    # The fuzz must exercise both outcomes, or it tests nothing.
    assert parsed > 50
    assert refused_count > 1000
