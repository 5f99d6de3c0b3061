"""Shared fixtures: synthetic datasets, the vendored samples, and one small model trained per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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

class Flushes:
    """What reached the disk, in order, while a test wrote a store: each fsync (its path), each syncfs (every
    path that existed under ``root`` then: one syncfs flushes them all) and each rename (its target)."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.mode = root, mode
        self.events: list[tuple[str, Any]] = []

    def durable(self, start: int = 0, stop: int | None = None) -> set[str]:
        """The paths flushed by the events [start, stop)."""
        found: set[str] = set()
        for kind, what in self.events[start:stop]:
            if kind == "fsync":
                found.add(what)
            elif kind == "syncfs":
                found |= what
        return found

    def renamed(self, target: Callable[[str], bool]) -> list[tuple[int, str]]:
        """(event index, source) of each rename onto a path ``target`` accepts."""
        return [(i, what[0]) for i, (kind, what) in enumerate(self.events) if kind == "replace" and target(what[1])]

    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.events if kind != "replace"}


@pytest.fixture(params=["syncfs", "fsync"])
def flushes(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flushes:
    """Spies on everything that makes a store's writes durable under ``tmp_path``, once with one syncfs per
    flush (where this file system allows it) and once with NUCLEI_SYNC=fsync (an fsync of each path)."""
    import nuclei.store.durable as durable

    monkeypatch.setattr(durable, "_slow", 0)
    if request.param == "fsync":
        monkeypatch.setenv(durable.SYNC_ENV, "fsync")
    elif not durable.syncfs_serves(str(tmp_path), str(tmp_path)):
        pytest.skip(f"syncfs does not serve {tmp_path}'s file system here")
    seen = Flushes(tmp_path, request.param)
    real_fsync, real_syncfs, real_replace = os.fsync, durable.sync_filesystem, os.replace

    def fsync(fd: int) -> None:
        seen.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def syncfs(path: str) -> None:
        seen.events.append(("syncfs", {str(p) for p in tmp_path.rglob("*")} | {str(tmp_path)}))
        real_syncfs(path)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        real_replace(src, dst, **kw)
        seen.events.append(("replace", (os.fspath(src), os.fspath(dst))))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(durable, "sync_filesystem", syncfs)
    monkeypatch.setattr(os, "replace", replace)
    return seen


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
