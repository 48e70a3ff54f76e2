"""line_of maps pydantic locations to TOML source lines; syntax_problem locates parse errors."""

from __future__ import annotations

import textwrap

import pytest

from reconciler.squishfile.tomlpos import Loc, TomlError, line_of, parse_toml, syntax_problem

DOCUMENT = textwrap.dedent(
    '''\
    # a comment with [brackets] and key = "value"
    name = "web"
    run.command = "httpd"
    run.args = ["-f",
      "[not a table]",
      "# not a comment",
    ]

    [layers]
    busybox = "builtin"
    data = { path = "./data", target = "/data", rw = true }
    "quoted key" = "./q"
    'literal.key' = "./l"
    note = """
    [fake.header]
    fake = "key"
    """
    after = "./after"   # comment

    [layers.sub]
    path = "./sub"

    [[ports]]
    container = 80
    host = 8080

    [[ports]]
    container = 81

    [ports.extra]
    x = 1

    [[a.b]]
    c = 1
    [[a.b]]
    c = 2
    '''
)


@pytest.mark.parametrize(
    ("loc", "line"),
    [
        pytest.param(("name",), 2, id="top-level key"),
        pytest.param(("run",), 3, id="dotted key defines its parent"),
        pytest.param(("run", "command"), 3, id="dotted key"),
        pytest.param(("run", "args"), 4, id="array of strings"),
        pytest.param(("run", "args", 1), 4, id="array element points at its key"),
        pytest.param(("layers",), 9, id="table header"),
        pytest.param(("layers", "busybox"), 10, id="key in table"),
        pytest.param(("layers", "data"), 11, id="inline table"),
        pytest.param(("layers", "data", "rw"), 11, id="key inside inline table"),
        pytest.param(("layers", "quoted key"), 12, id="basic quoted key"),
        pytest.param(("layers", "literal.key"), 13, id="literal quoted key with a dot"),
        pytest.param(("layers", "note"), 14, id="multi-line string"),
        pytest.param(("fake",), None, id="header inside a string is not a table"),
        pytest.param(("layers", "after"), 18, id="key after multi-line string"),
        pytest.param(("layers", "sub"), 20, id="sub-table header"),
        pytest.param(("layers", "sub", "path"), 21, id="key in sub-table"),
        pytest.param(("layers", "missing"), 9, id="missing key falls back to table"),
        pytest.param(("ports",), 23, id="array of tables: first header"),
        pytest.param(("ports", 0), 23, id="first array table"),
        pytest.param(("ports", 0, "host"), 25, id="key in first array table"),
        pytest.param(("ports", 1), 27, id="second array table"),
        pytest.param(("ports", 1, "host"), 27, id="missing key in second array table"),
        pytest.param(("ports", 1, "container"), 28, id="key in second array table"),
        pytest.param(("ports", 1, "extra", "x"), 31, id="sub-table of an array element"),
        pytest.param(("a", "b", 1, "c"), 36, id="nested array of tables"),
        pytest.param(("nothing",), None, id="unknown top-level key"),
        pytest.param((), None, id="empty location"),
    ],
)
def test_line_of(loc: Loc, line: int | None) -> None:
    assert line_of(DOCUMENT, loc) == line


def test_line_of_handles_crlf_and_escaped_quotes() -> None:
    text = 'a = "say \\"hi\\" [x]"\r\n[t]\r\nk = 1\r\n'
    assert line_of(text, ("a",)) == 1
    assert line_of(text, ("t", "k")) == 3


def test_line_of_handles_multiline_inline_table() -> None:
    text = 'layers.data = {\n  path = "./d",\n  rw = true,\n}\nnext = 1\n'
    assert parse_toml(text)["next"] == 1  # valid TOML 1.1
    assert line_of(text, ("layers", "data", "rw")) == 1
    assert line_of(text, ("next",)) == 5


@pytest.mark.parametrize(
    "text",
    ["[", "[[", "= 1", 'a = "unterminated', "a = '''open", "a.\n", "[a.]\nb", "\\x = ]]}}", ""],
)
def test_line_of_never_raises_on_malformed_text(text: str) -> None:
    line_of(text, ("a", 0, "b"))


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("a = 1\nb = = 2\n", 2, id="invalid value"),
        pytest.param("a = 1\na = 2\n", 2, id="duplicate key"),
        pytest.param("a = 1\n\n[b\n", 3, id="unclosed header"),
    ],
)
def test_syntax_problem_has_line_and_column(text: str, line: int) -> None:
    with pytest.raises(TomlError) as caught:
        parse_toml(text)
    problem = syntax_problem("web.toml", text, caught.value)
    assert (problem.file, problem.line, problem.field) == ("web.toml", line, "<syntax>")
    assert problem.message.startswith("invalid TOML: ")
    assert "column" in problem.message
    assert "(at line" not in problem.message
