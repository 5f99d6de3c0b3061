"""`nuclei view STORE [ID ...]`: open a results store's images, nuclei and measurements in napari."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nuclei.errors import NucleiError

if TYPE_CHECKING:
    from napari import Viewer


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("view", help="show images, nuclei and their measurements in napari "
                            "(pip install 'nuclei[viewer]')")
    parser.add_argument("store", help="results store (folder or fsspec URL)")
    parser.add_argument("ids", nargs="*", metavar="ID", help="images to show (default: the first ten; "
                        "`nuclei query STORE list` lists the ids)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, start: Callable[[Viewer], object] | None = None) -> int:
    """Build the viewer, then hand over to ``start`` (default: napari's event loop, until the window closes;
    tests pass one that closes the viewer instead of blocking)."""
    napari = _napari()
    viewer = open_viewer(args.store, args.ids or None)
    (start or (lambda _viewer: napari.run()))(viewer)
    return 0


def open_viewer(store: str, ids: list[str] | None = None, show: bool = True) -> Viewer:
    """A napari window showing ``ids`` of ``store`` (default: its first entries)."""
    napari = _napari()
    from nuclei.store.query import NucleiStore
    from nuclei.viewer import add_store_layers, chosen_ids

    opened = NucleiStore(store)
    chosen = chosen_ids(opened, ids)  # a wrong store or id fails before a window opens
    viewer = napari.Viewer(title=f"nuclei: {store}", show=show)
    try:
        add_store_layers(viewer, opened, chosen)
    except BaseException:
        with contextlib.suppress(Exception):  # a half-built window may fail to close: keep the first error
            viewer.close()
        raise
    return viewer


def _napari() -> Any:
    """napari, or an error saying how to install it (an optional extra: Qt is large)."""
    try:
        import napari
    except ImportError as exc:
        raise NucleiError(f"`nuclei view` needs napari ({exc}): pip install 'nuclei[viewer]'") from exc
    return napari
