"""BENCHMARKS.md's tables (and the figures README quotes) generated from ``benchmarks/results/*.json``.

    python -m benchmarks report              # rewrite the marked sections of BENCHMARKS.md and README.md
    python -m benchmarks report --check      # exit 1 if a marked section differs from its JSON (CI, pre-commit)

A section between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` becomes the tables of
``results/NAME.json`` with the run's command, date, commit, CPU and load; ``<!-- figure:NAME.KEY:SPEC -->...
<!-- /figure -->`` becomes one named figure (``SPEC`` a format spec such as ``.2f``). A marker whose JSON is
absent is left as it is (figures of an earlier run, before the suite) and listed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, RESULTS, Table

DOCUMENTS = (REPO / "BENCHMARKS.md", REPO / "README.md")
SECTION = re.compile(r"(?P<open><!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                     r"(?P<close><!-- /results:(?P=name) -->)", re.S)
FIGURE = re.compile(r"(?P<open><!-- figure:(?P<name>[\w-]+)\.(?P<key>[\w. -]+?)(?::(?P<spec>[^ ]*))? -->)"
                    r"(?P<body>(?:(?!<!--).)*?)"
                    r"(?P<close><!-- /figure -->)", re.S)


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def provenance(result: dict[str, Any]) -> str:
    """One line: what ran, when, on which commit and machine, and how loaded the machine was."""
    machine, load, sha = result.get("machine", {}), result.get("load", {}), result.get("commit", {})
    cores = load.get("cores") or machine.get("cores") or 1
    peak = max([*load.get("before", [0])[:1], *load.get("after", [0])[:1]])
    shared = (f"the machine was shared (load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} "
              f"after, on {cores} cores)" if peak > 0.5 * cores else f"load average {peak:.1f} on {cores} cores")
    commit = (sha.get("sha") or "?")[:10] + (f" + {sha['uncommitted_files']} uncommitted files"
                                            if sha.get("uncommitted_files") else "")
    libraries = result.get("libraries", {})
    versions = ", ".join(f"{k} {libraries[k]}" for k in ("onnxruntime-gpu", "onnxruntime", "numpy", "tensorflow")
                         if k in libraries)
    note = f"; {result['note']}" if result.get("note") else ""
    return (f"*Generated from `benchmarks/results/{result['name']}.json` by `python -m benchmarks report` (do not "
            f"edit by hand): `{result['command']}`, {result['started_utc'].replace('T', ' ')[:16]} UTC, "
            f"{result.get('seconds', 0):.0f} s, commit {commit}; {machine.get('cpu', '?')}, "
            f"{machine.get('cores', '?')} cores; {versions}; {shared}{note}.*")


def render(result: dict[str, Any]) -> str:
    """The markdown of one result: provenance, its tables, its notes."""
    parts = [provenance(result)]
    parts += [Table(**table).markdown() for table in result.get("tables", [])]
    parts += [f"- {note}" for note in result.get("notes", [])]
    return "\n\n".join(parts) + "\n"


def lookup(result: dict[str, Any], key: str) -> Any:
    """A named figure: ``key`` itself, a dotted path into a nested one (``results.scores.random.ap50``), or a
    cell of the result's own tables (``tables.0.rows.1.2``: table, row, column, counted from 0); KeyError when
    there is none."""
    value: Any = result if key.startswith("tables.") else result.get("figures", {})
    if key in value:
        return value[key]
    for part in key.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(key)
    return value


def figure(result: dict[str, Any], key: str, spec: str | None) -> str:
    value = lookup(result, key)
    return format(value, spec) if spec and isinstance(value, int | float) else str(value)


def rewrite(text: str, results: dict[str, dict[str, Any]]) -> tuple[str, set[str], set[str]]:
    """``text`` with every marked section and figure whose JSON exists generated; the names generated and
    the names kept as they were (no JSON)."""
    generated: set[str] = set()
    kept: set[str] = set()

    def section(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in results:
            kept.add(name)
            return match[0]
        generated.add(name)
        return match["open"] + render(results[name]) + match["close"]

    def one_figure(match: re.Match[str]) -> str:
        name = match["name"]
        try:
            lookup(results[name], match["key"]) if name in results else lookup({}, match["key"])
        except KeyError:
            kept.add(f"{name}.{match['key']}")
            return match[0]
        generated.add(name)
        return match["open"] + figure(results[name], match["key"], match["spec"]) + match["close"]

    return FIGURE.sub(one_figure, SECTION.sub(section, text)), generated, kept


def unparsed(text: str) -> int:
    """How many figure markers of ``text`` the pattern does not read (each opening must be a whole marker; one
    quoted in backticks, as the documents explain the syntax, is no marker)."""
    return len(re.findall(r"(?<!`)<!-- figure:", text)) - len(FIGURE.findall(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__.split("\n")[0])
    parser.add_argument("documents", nargs="*", type=Path, default=list(DOCUMENTS))
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of NAME.json files")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a document is stale")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    stale, used, wrong = [], set(), False
    for document in args.documents:
        text = document.read_text()
        if unread := unparsed(text):  # a marker the pattern cannot read would stay pasted, in silence
            wrong = True
            print(f"{document.name}: {unread} figure markers cannot be read", file=sys.stderr)
        new, generated, kept = rewrite(text, results)
        used |= generated
        for name in sorted(kept):
            result = name.split(".")[0]
            if result in results:  # a figure its result does not hold: a wrong key, never an earlier run
                wrong = True
                print(f"{document.name}: {name}: results/{result}.json has no such figure", file=sys.stderr)
            else:
                print(f"{document.name}: {name}: no results/{result}.json, kept as it is (an earlier run)")
        if new != text:
            stale.append(document)
            if not args.check:
                document.write_text(new)
        print(f"{document.name}: {len(generated)} generated from JSON"
              + (" (stale)" if args.check and new != text else " (rewritten)" if new != text else " (current)"))
    for name in sorted(set(results) - used):
        print(f"results/{name}.json: no marker in {', '.join(d.name for d in args.documents)}", file=sys.stderr)
    return 1 if wrong or (args.check and stale) else 0
