"""A flow's parameters generated from its config's fields, so a setting is named, typed, defaulted and described
once (in `nuclei.config`), and Prefect's parameter schema, its UI and `prefect deployment run ... --param
NAME=VALUE` see exactly the config's fields."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field

F = TypeVar("F", bound=Callable[..., Any])


def config_parameters(config: type[BaseModel]) -> Callable[[F], F]:
    """Give the decorated ``fn(own..., **settings)`` one keyword parameter per field of ``config`` (its name, type,
    default and description), after the parameters ``fn`` declares itself (the flow's own, e.g. ``progress``,
    described in its docstring's Args section, which must end the docstring). Put under `prefect.flow`.
    Keyword-only, so Prefect passes each by name; the fields reach ``fn`` as ``settings``."""

    def parameter(name: str) -> inspect.Parameter:
        field = config.model_fields[name]
        default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
        annotation = Annotated[field.annotation, Field(description=field.description)]  # type: ignore[name-defined]
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    def apply(fn: F) -> F:
        signature = inspect.signature(fn)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        clash = {p.name for p in own} & set(config.model_fields)
        if clash:
            raise TypeError(f"{fn.__name__} declares {sorted(clash)}, which are {config.__name__} fields")
        fn.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[parameter(name) for name in config.model_fields] + own)
        # Prefect reads a parameter's description from the docstring's Args section
        args = "".join(f"\n    {name}: {' '.join(field.description.split())}"
                       for name, field in config.model_fields.items() if field.description)
        doc = inspect.cleandoc(fn.__doc__ or "")
        fn.__doc__ = f"{doc}{args}\n" if "\nArgs:" in doc else f"{doc}\n\nArgs:{args}\n"
        return fn

    return apply
