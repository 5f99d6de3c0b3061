"""`nuclei demo`: the whole job on the bundled samples, embedded defaults only (no server to start).

Trains a small U-Net on the bundled samples (nuclei/assets/sample), exports and checks it, segments the sample
images with the shipped default model into a Zarr store, and prints what the store holds, with overlay pictures
to look at.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nuclei.modeldir import default_model_path

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "sample"  # package data: works after pip install


def run_demo(out: Path, epochs: int = 30, verbose: bool = False) -> dict[str, object]:
    """Train, export, segment and query as one Prefect flow run (train and segment are its sub-flows);
    TensorFlow's start-up lines only with ``verbose``."""
    from prefect import flow

    from nuclei.training.startup import start_tensorflow

    start_tensorflow(verbose)

    return flow(name="demo")(_demo)(out, epochs)


def _demo(out: Path, epochs: int) -> dict[str, object]:
    from flows.segment import segment
    from flows.train import train
    from nuclei.store.query import open_store

    # A two-minute model on 12 images shows the training pipeline; the shipped model does the segmenting, so
    # the demo does not fail on the small model's quality (min_ap50=0), it reports it.
    model_dir = train(data_dir=str(SAMPLES), out_dir=str(out / "models"), name="demo-unet", epochs=epochs,
                      crop_size=128, batch_size=8, steps_per_epoch=8, depth=3, base_filters=8, patience=10,
                      min_ap50=0.0)
    print(f"\ntrained and exported: {model_dir} (metrics in {model_dir}/metrics.json, curves in curves.png)")
    shipped = default_model_path()
    model = str(shipped or model_dir)
    print(f"segmenting {SAMPLES / 'images'} with {'the shipped model ' if shipped else 'the demo model '}{model}")
    summary = segment(inputs=[str(SAMPLES / "images")], store=str(out / "results.zarr"), model=model)
    store = open_store(out / "results.zarr")
    overlays = store.export(out / "overlays", "overlay")
    print(json.dumps(store.stats(), indent=2, default=str))
    print(f"\nstore: {out / 'results.zarr'} (in napari: nuclei view {out / 'results.zarr'}, viewer extra)")
    print(f"overlays: {len(overlays)} PNGs in {out / 'overlays'}")
    print(f"query it: nuclei query {out / 'results.zarr'} list")
    return summary


def run(args: argparse.Namespace) -> int:
    summary = run_demo(Path(args.out), epochs=args.epochs, verbose=args.verbose)
    return 1 if summary["failed"] else 0


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="train, export, segment and query the bundled sample images")
    parser.add_argument("--out", default="runs/demo", help="where the model, store and overlays go")
    parser.add_argument("--epochs", type=int, default=30)
    parser.set_defaults(handler=run)
