"""Command-line options derived from a config's fields, so an option exists once: in the config.

Each field becomes ``--field-name`` with the field's type, description and choices; booleans become on/off
switches; options left out are not passed on, so the config's (or the flow's) defaults apply.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel


def _plain(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None was allowed)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(get_args(annotation))
    return annotation, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_options(
    parser: argparse.ArgumentParser,
    config: type[BaseModel],
    skip: Iterable[str] = (),
    aliases: Mapping[str, list[str]] | None = None,
) -> None:
    """One option per field of ``config`` (except ``skip``), dest = the field name, default = not given."""
    aliases = aliases or {}
    for name, field in config.model_fields.items():
        if name in skip:
            continue
        annotation, _ = _plain(field.annotation)
        flags = [_flag(name), *aliases.get(name, [])]
        text = (field.description or "").replace("%", "%%")  # argparse %-formats help: a "90%" is text here
        if annotation is bool:
            if field.default is True:
                parser.add_argument(_flag(f"no_{name}"), *aliases.get(name, []), dest=name, action="store_false",
                                    default=None, help=f"{text} (on by default; this option turns it off)")
            else:
                parser.add_argument(*flags, dest=name, action="store_true", default=None, help=text)
            continue
        kind: dict[str, Any] = {**_kind(annotation), "required": field.is_required()}
        parser.add_argument(*flags, dest=name, default=None, help=_with_default(text, field.default), **kind)


def _with_default(text: str, default: Any) -> str:
    """The help text with the field's default when it is a number (the value a lab compares against)."""
    if isinstance(default, bool) or not isinstance(default, int | float):
        return text
    return f"{text} (default: {default:g})" if isinstance(default, float) else f"{text} (default: {default})"


def _kind(annotation: Any) -> dict[str, Any]:
    origin = get_origin(annotation)
    if origin is Literal:
        return {"choices": list(get_args(annotation))}
    if origin is list:
        return {"action": "append", "type": get_args(annotation)[0], "metavar": "VALUE"}
    if origin is tuple:
        return {"nargs": len(get_args(annotation)), "type": get_args(annotation)[0]}
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return {"type": json.loads, "metavar": "JSON"}
    if annotation in (int, float, str):
        return {"type": annotation}
    # float | Literal["auto"] (the float possibly Annotated with bounds): a number or one of the words
    words = [w for a in get_args(annotation) if get_origin(a) is Literal for w in get_args(a)]
    numbers = [a for a in get_args(annotation) if float in (a, get_origin(a) is Annotated and get_args(a)[0])]
    if words and numbers:
        return {"type": number_or(*words), "metavar": f"NUMBER|{'|'.join(words)}"}
    if get_origin(annotation) in (Union, types.UnionType):  # e.g. str | list[str]: a repeatable option
        return {"action": "append", "type": str, "metavar": "VALUE"}
    raise TypeError(f"no command-line form for {annotation!r}")


def number_or(*words: str) -> Callable[[str], float | str]:
    """An argparse type: one of ``words``, else a number."""

    def parse(text: str) -> float | str:
        if text in words:
            return text
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or {' / '.join(words)}, got {text!r}") from None

    return parse


def given(args: argparse.Namespace, config: type[BaseModel]) -> dict[str, Any]:
    """The options of ``config`` that were given on the command line."""
    return {k: v for k, v in vars(args).items() if k in config.model_fields and v is not None}


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
