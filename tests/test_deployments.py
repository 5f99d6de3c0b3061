"""deployments/prefect.yaml on a real Prefect server: pool, deploy, worker, train and segment runs, a cron.

Everything runs as separate processes, as a lab would start them (`make server`, `make worker`,
`make deploy`), on 127.0.0.1 with this test's own PREFECT_HOME and port; every process is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nuclei.io.images import write_png
from nuclei.io.synthetic import make_sample, write_dataset
from nuclei.modeldir import load_model_dir
from nuclei.store.query import open_store
from tests.conftest import REPO

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "nuclei-local"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (server/worker children included), SIGKILL what is left after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Prefect:
    """A real Prefect server on 127.0.0.1 and the CLI pointed at it."""

    def __init__(self, home: Path, project: Path) -> None:
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.project = project
        self.logs = home / "logs"
        self.logs.mkdir(parents=True)
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",  # cron runs appear within seconds
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_CLI_WRAP_LINES": "false",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([PREFECT, *args], cwd=self.project, env={**self.env, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)
        return proc

    def cli(self, *args: str) -> str:
        done = subprocess.run([PREFECT, *args], cwd=self.project, env=self.env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.processes[0].poll() is None, (self.logs / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"Prefect server on port {self.port} not healthy after {timeout} s")

    def _request(self, method: str, path: str, body: dict | None = None, patience: float = 180) -> Any:
        """One API call, retried on timeouts: on 2 cores a running flow can starve the server for a while."""
        deadline = time.monotonic() + patience
        while True:
            try:
                response = httpx.request(method, f"{self.api}{path}", json=body, timeout=30)
                response.raise_for_status()
                return response.json()
            except httpx.TimeoutException:
                if time.monotonic() > deadline:
                    raise

    def post(self, path: str, body: dict) -> list[dict]:
        return self._request("POST", path, body)

    def flow_run(self, run_id: str) -> dict:
        return self._request("GET", f"/flow_runs/{run_id}")

    def wait_final(self, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(2)
        raise TimeoutError(f"flow run {run_id} not finished after {timeout} s: {run['state']}")

    def run_deployment(self, deployment: str, **params: object) -> dict:
        args = [arg for k, v in params.items() for arg in ("--param", f"{k}={json.dumps(v)}")]
        out = self.cli("deployment", "run", deployment, *args)
        run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
        return self.wait_final(run_id)

    def summary_artifact(self, run_id: str) -> str:
        artifacts = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        return next(a["data"] for a in artifacts if a["key"] == "segment-summary")

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            _stop(proc)


def _write_images(folder: Path, seeds: range) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        image, _ = make_sample((96, 128), seed=seed)
        write_png(folder / f"field_{seed:02d}.png", image)


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prefect]:
    """A project folder like the repository (flows/ and deployments/ from the repo) with its own server."""
    project = tmp_path_factory.mktemp("project")
    (project / "flows").symlink_to(REPO / "flows")
    (project / "deployments").symlink_to(REPO / "deployments")
    write_dataset(project / "data" / "train", n=8, shape=(96, 128))
    _write_images(project / "incoming", range(100, 103))
    server = Prefect(tmp_path_factory.mktemp("prefect-home"), project)
    try:
        server.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(server.port))
        server.wait_healthy()
        yield server
    finally:
        server.stop_all()


def test_deployments_train_segment_and_schedule(prefect: Prefect) -> None:
    project = prefect.project
    # `make worker` + `make deploy`, from the project folder (it becomes the runs' working directory).
    prefect.cli("work-pool", "create", POOL, "--type", "process")
    out = prefect.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    for name in ("train/sample", "train/dsb2018", "train/generalist", "train/stained", "segment/watch-folder"):
        assert name in out, out
    recipe = prefect.cli("deployment", "inspect", "train/dsb2018")  # the shipped model's stages, in one run
    assert "'contact_weight': 5.0" in recipe and "'quantize_int8': True" in recipe, recipe
    prefect.cli("deployment", "schedule", "clear", "segment/watch-folder", "-y")  # its cron comes later
    # The worker's NUCLEI_MODEL is the deployments' default model (the one this test trains below).
    worker = prefect.start("worker", "worker", "start", "--pool", POOL,
                           env={"NUCLEI_MODEL": str(project / "models" / "tiny"), "NUCLEI_THREADS": "1"})

    # prefect deployment run train/sample with tiny parameters
    run = prefect.run_deployment("train/sample", data_dir="data/train", name="tiny", epochs=2, batch_size=4,
                                 crop_size=64, depth=3, base_filters=8, steps_per_epoch=2, min_ap50=0.0)
    assert run["state"]["type"] == "COMPLETED", (prefect.logs / "worker.log").read_text()[-4000:]
    model = load_model_dir(project / "models" / "tiny")
    assert (model.path / "metrics.json").is_file()

    # segment/watch-folder on its defaults: incoming/ -> results/nuclei.zarr with the worker's model
    run = prefect.run_deployment("segment/watch-folder", n_workers=1)
    assert run["state"]["type"] == "COMPLETED", (prefect.logs / "worker.log").read_text()[-4000:]
    store = open_store(project / "results" / "nuclei.zarr")
    images = store.images()
    assert sorted(i.id for i in images) == ["field_100", "field_101", "field_102"]
    assert {i.model_version for i in images} == {model.version}  # each mask records its model
    first_times = {i.id: i.written for i in images}

    # New images arrive; a one-minute cron replaces the 15-minute one and picks up only those.
    _write_images(project / "incoming", range(103, 105))
    prefect.cli("deployment", "schedule", "create", "segment/watch-folder", "--cron", "* * * * *")
    scheduled = _wait_scheduled_run(prefect, timeout=180)
    prefect.cli("deployment", "schedule", "clear", "segment/watch-folder", "-y")  # no further runs
    assert scheduled["state"]["type"] == "COMPLETED", (prefect.logs / "worker.log").read_text()[-4000:]
    assert scheduled["auto_scheduled"] is True
    summary = prefect.summary_artifact(scheduled["id"])
    assert "| done | 2 |" in summary and "| skipped | 3 |" in summary, summary

    images = open_store(project / "results" / "nuclei.zarr").images()
    assert len(images) == 5
    assert {i.id: i.written for i in images if i.id in first_times} == first_times  # old entries untouched

    _stop(worker)
    assert worker.returncode is not None


def _wait_scheduled_run(prefect: Prefect, timeout: float) -> dict:
    """The first cron-created run of segment/watch-folder, once finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = prefect.post("/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC", "limit": 50})
        runs = [r for r in runs if r["auto_scheduled"] and r["state"]["type"] != "SCHEDULED"]
        if runs:
            return prefect.wait_final(runs[0]["id"], timeout=max(30.0, deadline - time.monotonic()))
        time.sleep(2)
    raise TimeoutError(f"no scheduled run within {timeout} s")


def test_docker_deployment_file_is_valid() -> None:
    """The documented GPU (docker pool) variant parses with Prefect's own deployment schema."""
    import yaml
    from prefect.cli.deploy._models import PrefectYamlModel  # the schema `prefect deploy` validates with

    for name in ("prefect.yaml", "prefect-docker.yaml"):
        config = PrefectYamlModel.model_validate(yaml.safe_load((REPO / "deployments" / name).read_text()))
        assert config.deployments, name
