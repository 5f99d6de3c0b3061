"""The Dockerfile's own install steps, run in the test environment (no Docker engine on these machines).

The worker stage's COPY lines build the context, its RUN lines after WORKDIR run as written (python3 -m venv,
pip install .) with the image's ENV; dependencies come from this test environment through a .pth file instead
of the package index, so only the project itself is built and installed. The installed package, not the
repository, then segments images with the model the image ships.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nuclei.io.images import write_png
from nuclei.io.synthetic import make_sample
from nuclei.modeldir import DEFAULT_MODEL_NAME
from nuclei.store.backend import Store
from tests.conftest import REPO

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def _stage(name: str) -> list[tuple[str, str]]:
    """(instruction, argument) pairs of one stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    steps, current = [], None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, argument = line.strip().partition(" ")
        if instruction == "FROM":
            current = argument.split(" AS ")[-1].strip()
        elif current == name:
            steps.append((instruction, argument.strip()))
    return steps


def _env(steps: list[tuple[str, str]], root: Path) -> dict[str, str]:
    """The stage's ENV with its absolute paths moved under ``root``."""
    env: dict[str, str] = {}
    for instruction, argument in steps:
        if instruction == "ENV":
            for pair in shlex.split(argument):
                key, _, value = pair.partition("=")
                value = value.replace("$PATH", os.environ["PATH"])
                env[key] = re.sub(r"(?<![\w.])/(opt|app)\b", lambda m: f"{root}/{m.group(1)}", value)
    return env


def test_worker_and_train_stages_install_and_run(tmp_path: Path) -> None:
    worker = _stage("worker")
    assert ("USER", "nuclei") in worker and worker[-2:] != [("USER", "root")], "the image must run as non-root"
    app = tmp_path / "app"
    env = {**os.environ, **_env(worker, tmp_path)}
    env.pop("PYTHONPATH", None)
    bin_dir = tmp_path / "bin"  # `python3` of the image: this interpreter's base Python, outside any venv
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env["PATH"] = f"{env['VIRTUAL_ENV']}/bin:{bin_dir}:{env['PATH']}"

    after_workdir = worker[[i for i, _ in worker].index("WORKDIR"):]
    for instruction, argument in after_workdir:
        if instruction == "COPY":
            *sources, dest = argument.split()
            for source in sources:
                target = app / dest / (Path(source).name if dest.endswith("/") or len(sources) > 1 else "")
                copy = shutil.copytree if (REPO / source).is_dir() else shutil.copy2
                target.parent.mkdir(parents=True, exist_ok=True)
                copy(REPO / source, target)
        elif instruction == "RUN":
            done = subprocess.run(argument, shell=True, cwd=app, env=env, capture_output=True, text=True,
                                  timeout=400)
            assert done.returncode == 0, f"RUN {argument}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            if "-m venv" in argument:  # offline: this environment's packages stand in for the index
                site = next(Path(env["VIRTUAL_ENV"]).glob("lib/python*/site-packages"))
                (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    venv_python = Path(env["VIRTUAL_ENV"]) / "bin" / "python"
    where = subprocess.run([venv_python, "-c", "import nuclei, flows; print(nuclei.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(env["VIRTUAL_ENV"]), f"nuclei imported from {where}, not the image's install"

    images = tmp_path / "incoming"
    images.mkdir()
    for i in range(2):
        image, _ = make_sample((96, 96), seed=i)
        write_png(images / f"cell{i}.png", image)
    done = subprocess.run(
        [Path(env["VIRTUAL_ENV"]) / "bin" / "nuclei", "segment", str(images), "--store", str(tmp_path / "o.zarr"),
         "--workers", "1", "--json"],
        cwd=tmp_path, env={**env, "PREFECT_HOME": str(tmp_path / "prefect")}, capture_output=True, text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["done"] == 2 and summary["model"].startswith(f"{DEFAULT_MODEL_NAME}@")
    record = Store(tmp_path / "o.zarr").record("cell0")
    # The default model came with `pip install .` (package data), not from the source tree or $NUCLEI_MODEL.
    assert record is not None and record.model.path.startswith(env["VIRTUAL_ENV"]), record.model.path

    train = _stage("train")
    for instruction, argument in train:
        if instruction == "RUN":
            done = subprocess.run(argument, shell=True, cwd=app, env=env, capture_output=True, text=True,
                                  timeout=400)
            assert done.returncode == 0, f"RUN {argument}\n{done.stderr[-3000:]}"
    assert train[-1] == ("USER", "nuclei")
