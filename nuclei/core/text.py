"""Text from file names, made safe for where it goes: a terminal, a spreadsheet, Markdown.

File names are the user's (or an attacker's) text: a name may carry terminal escape sequences, start a
spreadsheet formula (``=HYPERLINK(...)``) or close a Markdown code span and open raw HTML.
"""

from __future__ import annotations

import re

# A leading character that makes Excel, LibreOffice or Sheets read a cell as a formula (OWASP's list, plus the
# full-width forms some spreadsheets accept).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def printable(text: str) -> str:
    """``text`` with every control or invisible format character (ESC, CR, bidi overrides, ...) written as its
    Python escape, so printing it cannot move the cursor, recolour or rewrite the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def spreadsheet_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: strings that would start a formula get a leading apostrophe
    (the convention spreadsheets hide); numbers are left as they are, negative ones included."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def markdown_code(text: str) -> str:
    """``text`` as a Markdown code span that no backtick in it can close (CommonMark: a fence longer than any
    run of backticks inside); printable() first, and nothing inside a code span is HTML."""
    text = printable(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_text(text: str) -> str:
    """``text`` as plain Markdown text: its punctuation backslash-escaped, so no link, emphasis, table cell or
    HTML tag comes out of it."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", printable(text))
