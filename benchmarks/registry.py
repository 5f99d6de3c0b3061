"""The suite's benchmarks: every module of ``benchmarks/speed`` (each figure a ratio against a baseline measured
in the same run) and ``benchmarks/quality`` (scores of models on images they never trained on; slow, model runs).
Found from the files, so a new script is listed without being registered; its docstring's first line is its
summary, read without importing it (imports of TensorFlow or ONNX take seconds)."""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
KINDS = ("speed", "quality")


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str
    path: Path

    @property
    def module(self) -> str:
        return f"benchmarks.{self.kind}.{self.name}"

    def summary(self) -> str:
        doc = ast.get_docstring(ast.parse(self.path.read_text())) or ""
        return " ".join(doc.split("\n\n")[0].split())

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


def benchmarks() -> dict[str, Benchmark]:
    """Every benchmark by name, speed first; a name in both kinds is an error (``python -m benchmarks NAME``)."""
    found: dict[str, Benchmark] = {}
    for kind in KINDS:
        for path in sorted((HERE / kind).glob("*.py")):
            if path.name.startswith("_"):
                continue
            if path.stem in found:
                raise RuntimeError(f"{path.stem} is both {found[path.stem].kind} and {kind}")
            found[path.stem] = Benchmark(path.stem, kind, path)
    return found
