"""The cut-offs that turn probabilities into nuclei, as a model directory's thresholds.json stores them.

Kept apart from post-processing (scipy, scikit-image) so reading a model directory stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """Cut-offs that turn probabilities into objects; kept together so they can be tuned and saved."""

    foreground: float = 0.5
    core: float = 0.5
    min_size: int = 8
    confidence: float = 0.0  # mean foreground probability a nucleus needs to be kept (0: keep all)

    def __post_init__(self) -> None:
        """Reject values that cannot be probabilities or sizes."""
        for name in ("foreground", "core", "confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Thresholds.{name} must lie in [0, 1], got {value!r}")
        if self.min_size < 0:
            raise ValueError(f"Thresholds.min_size must be >= 0, got {self.min_size!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        """Build from a (JSON-loaded) mapping; missing keys keep their defaults, unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown threshold keys: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        if "foreground" in data:
            kwargs["foreground"] = float(data["foreground"])
        if "core" in data:
            kwargs["core"] = float(data["core"])
        if "min_size" in data:
            kwargs["min_size"] = int(data["min_size"])
        if "confidence" in data:
            kwargs["confidence"] = float(data["confidence"])
        return cls(**kwargs)

    def as_dict(self) -> dict[str, float | int]:
        """Plain JSON-serialisable dict, the inverse of `from_dict`."""
        return asdict(self)
