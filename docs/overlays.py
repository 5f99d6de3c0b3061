"""The README picture: a default run (`nuclei segment`, no --model) on three bundled samples, each panel saying
which model segmented it.

    .venv/bin/python docs/overlays.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file backend

from nuclei.inference.run import segment  # noqa: E402
from nuclei.store.query import open_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "nuclei" / "assets" / "sample" / "images"
PANELS = [("IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB", "BBBC039 field, 16-bit (12-bit values)"),
          ("2b50b1e3fa5c5aa39bc84ebfaea9961b7199c4d2488ae0b48d0b3459807d59d2", "DSB2018 fluorescence"),
          ("6d327ab4f0e3604fa6e9b8041c7e6db86ab809890d886c691f6e59c9168b7fbe", "DSB2018 H&E tissue")]


def main() -> None:
    work = Path(tempfile.mkdtemp())
    try:
        (work / "in").mkdir()
        for image_id, _ in PANELS:
            shutil.copy(SAMPLES / f"{image_id}.png", work / "in")
        segment([work / "in"], work / "s.zarr")
        store = open_store(work / "s.zarr")
        fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 5))
        for ax, (image_id, title) in zip(axes, PANELS, strict=True):
            meta, table = store.metadata(image_id), store.measurements(image_id)
            model = meta["model"]["version"].split("@")[0]
            ax.imshow(store.overlay(image_id))
            ax.set_title(f"{title}\n{meta['n_nuclei']} nuclei, median area {np.median(table['area_px']):.0f} px\n"
                         f"by {model}", fontsize=9)
            ax.axis("off")
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        fig.savefig(ROOT / "docs" / "overlays.png", dpi=80)
    finally:
        shutil.rmtree(work)
    print(ROOT / "docs" / "overlays.png")


if __name__ == "__main__":
    main()
