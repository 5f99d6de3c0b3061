"""A fitting stage's progress as every shell shows it: the epoch, its validation loss and the best one so far.

The terminal's bar (`nuclei train`, `nuclei finetune`, `nuclei demo`), the napari plugin's status line and the
Prefect run's artifacts all read one `Epochs`; nothing here imports TensorFlow, so a viewer or a flow can use it.

    epochs = Epochs(total=30)
    epochs.add({"epoch": 1.0, "loss": 1.8, "val_loss": 1.48, "seconds": 4.1})
    epochs.line()       # 'epoch 1/30: val loss 1.4800, best 1.4800 (epoch 1)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Epochs:
    """The epochs a stage has fitted so far, each one's figures (`epoch`, `loss`, `val_loss`, `seconds` since
    fitting began, ...). ``total``: the epochs asked for; ``budget_s``: the time budget, where one ends fitting
    first (then the epochs asked for are only a ceiling)."""

    total: int | None = None
    budget_s: float | None = None
    figures: list[dict[str, float]] = field(default_factory=list)

    def add(self, figures: dict[str, float]) -> None:
        self.figures.append(dict(figures))

    def take(self, figures: dict[str, float]) -> None:
        """A fine-tune's progress figures (`nuclei.training.finetune.Progress`): the fitting budget when fitting
        begins (`budget_s`), then each epoch's."""
        if "budget_s" in figures:
            self.budget_s = figures["budget_s"]
        if "epoch" in figures:
            self.add(figures)

    @property
    def last(self) -> dict[str, float]:
        return self.figures[-1] if self.figures else {}

    def best(self) -> dict[str, float]:
        """The epoch with the lowest validation loss so far (the weights fitting keeps), or {}."""
        scored = [f for f in self.figures if math.isfinite(f.get("val_loss", math.nan))]
        return min(scored, key=lambda f: f["val_loss"]) if scored else {}

    def fraction(self) -> float:
        """How far fitting is, 0 to 1: by the time budget where there is one, else by the epochs asked for."""
        last = self.last
        if not last:
            return 0.0
        if self.budget_s:
            return min(1.0, last.get("seconds", 0.0) / self.budget_s)
        return min(1.0, last["epoch"] / self.total) if self.total else 0.0

    def line(self, epoch: bool = True) -> str:
        """One line: 'epoch 12/30: val loss 0.4123, best 0.4100 (epoch 10)' (without the epoch in front where a
        bar counts them)."""
        last, best = self.last, self.best()
        if not last:
            return "starting"
        of = f"/{self.total}" if self.total and not self.budget_s else ""
        parts = [f"val loss {last['val_loss']:.4f}"] if "val_loss" in last else []
        if best:
            parts.append(f"best {best['val_loss']:.4f} (epoch {int(best['epoch'])})")
        figures = ", ".join(parts)
        if not epoch:
            return figures
        return f"epoch {int(last['epoch'])}{of}: {figures}" if figures else f"epoch {int(last['epoch'])}{of}"

    def markdown(self) -> str:
        """The epochs as a Markdown table (a Prefect artifact): epoch, losses, seconds; the best one marked."""
        best = self.best().get("epoch")
        rows = ["| epoch | loss | val loss | seconds | |", "|---:|---:|---:|---:|---|"]
        for f in self.figures:
            mark = "best (kept)" if f["epoch"] == best else ""
            rows.append(f"| {int(f['epoch'])} | {_cell(f, 'loss')} | {_cell(f, 'val_loss')} | "
                        f"{f.get('seconds', math.nan):.0f} | {mark} |")
        return "\n".join(rows)


def _cell(figures: dict[str, float], key: str) -> str:
    return f"{figures[key]:.4f}" if key in figures else ""
