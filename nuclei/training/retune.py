"""Choose a trained model's thresholds again and score it again, as the `train` flow's evaluate and quantize
steps do, without training: for when post-processing changes and a shipped model must follow it. Run from where
the model's `config.json` data paths resolve (the repository root for the shipped models):

    .venv/bin/python -m nuclei.training.retune nuclei/assets/models/nuclei-generalist

Rewrites thresholds.json, metrics.json, evaluation/ and (with quantize_int8) model.int8.onnx and int8.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nuclei.config import TrainConfig
from nuclei.core.thresholds import Thresholds
from nuclei.evaluation import Report, format_table
from nuclei.training import steps


def retune(model_dir: Path) -> tuple[Thresholds, Report]:
    """The train flow's steps after export, on the same split of the same data as the model's config.json."""
    written = json.loads((model_dir / "config.json").read_text())
    config = TrainConfig(**{k: v for k, v in written.items() if k in TrainConfig.model_fields})
    data = steps.split(steps.load(config), config)
    thresholds, report, _ = steps.evaluate(model_dir, data)
    if config.quantize_int8:
        steps.quantize(model_dir, data, report)
    return thresholds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    thresholds, report = retune(parser.parse_args().model_dir)
    print(thresholds, format_table(report), sep="\n")


if __name__ == "__main__":
    main()
