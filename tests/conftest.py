"""Shared fixtures: synthetic datasets, the vendored samples, and one small model trained per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "nuclei" / "assets" / "sample"
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or a skip with the reason (it is not on users' machines)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (developer data, not shipped)")
    return path



def chunk_files(array_dir: Path) -> list[Path]:
    """A stored array's chunk files under either chunk key encoding: c.0.0 (image entries), c/0/0 (slides)."""
    return sorted(p for p in array_dir.iterdir() if p.is_file() and p.name.startswith("c.")) + sorted(
        p for p in array_dir.glob("c/**/*") if p.is_file())

@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nuclei.io.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synthetic"), n=10, shape=(96, 128))


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One real temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path, prefect_harness: None) -> Path:
    """A tiny U-Net trained for 2 epochs through the real `train` flow (real TensorFlow, tf2onnx, ORT)."""
    from flows.train import train

    out = tmp_path_factory.mktemp("models")
    path = train(data_dir=str(synthetic_dir), out_dir=str(out), name="tiny", epochs=2, batch_size=4,
                 crop_size=64, depth=3, base_filters=8, steps_per_epoch=3, min_ap50=0.0)  # a smoke model
    return Path(path)


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    """The model the package ships (no training, no Prefect server): what the fast tier runs and stores with."""
    from nuclei.modeldir import DEFAULT_MODEL_NAME, SHIPPED_MODELS

    path = SHIPPED_MODELS / DEFAULT_MODEL_NAME
    if not (path / "model.onnx").is_file():
        pytest.skip(f"{path} has no model.onnx")
    return path


SLOW_FIXTURES = {"trained_model", "prefect_harness"}  # a training run or a Prefect server: not the fast tier


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test-fast` runs `-m "not slow"`: tests that need a trained model or a Prefect server are slow."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
