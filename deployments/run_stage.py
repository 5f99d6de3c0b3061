"""Run one stage of a staged training deployment from an earlier model, through the same `train` flow.

    .venv/bin/python deployments/run_stage.py generalist 5 --init-from nuclei/assets/models/nuclei-generalist

A deployment such as `train/generalist` trains all its stages in one run (hours on a CPU). When the stages
before N are already published (the shipped model is stage 4's), this runs stage N alone with exactly the
parameters the deployment gives it, from that model's weights: what the full run would do at that point.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from flows.train import train
from nuclei.training.run import plan_stages

DEPLOYMENTS = Path(__file__).resolve().parent / "prefect.yaml"


def stage_parameters(deployment: str, stage: int, file: Path = DEPLOYMENTS) -> dict[str, Any]:
    """Stage ``stage`` (1-based) of the named deployment, as the staged flow would run it."""
    found = [d for d in yaml.safe_load(file.read_text())["deployments"] if d["name"] == deployment]
    if not found:
        raise SystemExit(f"{file}: no deployment named {deployment!r}")
    params = dict(found[0]["parameters"])
    stages = plan_stages({k: v for k, v in params.items() if k != "then"}, params.get("then") or [])
    if not 1 <= stage <= len(stages):
        raise SystemExit(f"{deployment} has stages 1..{len(stages)}, not {stage}")
    return stages[stage - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("deployment", help="a deployment of deployments/prefect.yaml, e.g. generalist")
    parser.add_argument("stage", type=int, help="the stage to run (1 = the first)")
    parser.add_argument("--init-from", required=True, help="the model directory the previous stage published")
    parser.add_argument("--out-dir", help="where to publish (default: the deployment's out_dir)")
    args = parser.parse_args()
    params = stage_parameters(args.deployment, args.stage)
    params["init_from"] = args.init_from
    if args.out_dir:
        params["out_dir"] = args.out_dir
    print(train(**params))


if __name__ == "__main__":
    main()
