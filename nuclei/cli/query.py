"""`nuclei query STORE {list,show,stats,export}`: read a results store from the command line.

    nuclei query results.zarr list --pattern 'plate1/*' --min-nuclei 5
    nuclei query results.zarr show plate1/a1 --json
    nuclei query results.zarr stats
    nuclei query results.zarr export out/ --labels --overlay
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuclei.core.text import printable
from nuclei.errors import StoreError

if TYPE_CHECKING:
    from nuclei.store.query import ExportKind, NucleiStore

SHOW_ROWS = 20


def add_query(sub: argparse._SubParsersAction) -> None:
    """Register `nuclei query STORE {list,show,stats,export}`."""
    parser = sub.add_parser(
        "query", help="list, show, summarise and export the results in a store",
        description="List, show, summarise and export a results store. Tables and outlines for other tools: "
                    "`export --measurements nuclei.csv` (one row per nucleus: area, shape, intensities, units in "
                    "the column names; .parquet with pyarrow), `export --summary images.csv` (one row per image), "
                    "`export OUT_DIR --rois qupath|imagej` (nucleus outlines for QuPath or ImageJ/Fiji). "
                    "`nuclei query STORE export --help` lists every option.")
    parser.add_argument("store", help="results store (folder or fsspec URL)")
    actions = parser.add_subparsers(dest="query_command", required=True, metavar="{list,show,stats,export}")
    _add_list(actions)
    _add_show(actions)
    _add_stats(actions)
    _add_export(actions)


def _add_list(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("list", help="one line per complete image")
    parser.add_argument("--pattern", help="glob on the image id, e.g. 'plate1/*'")
    parser.add_argument("--source", help="substring of (or glob on) the source path or URL")
    parser.add_argument("--min-nuclei", type=int, help="at least this many nuclei")
    parser.add_argument("--max-nuclei", type=int, help="at most this many nuclei")
    parser.add_argument("--model", help="model version prefix")
    parser.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    parser.set_defaults(handler=_list)


def _add_show(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("show", help="one image's metadata and measurements")
    parser.add_argument("id", help="image id")
    parser.add_argument("--json", action="store_true", help=f"all as JSON (the table shows {SHOW_ROWS} rows)")
    parser.set_defaults(handler=_show)


def _add_stats(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("stats", help="totals over the store")
    parser.add_argument("--json", action="store_true", help="JSON instead of text")
    parser.set_defaults(handler=_stats)


def _add_export(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "export", help="write OUT_DIR/<id>.png per image (OUT_DIR/<kind>/<id>.png when several kinds)")
    parser.add_argument("out_dir", nargs="?", help="output folder for PNGs (--labels, --masks, --overlay)")
    parser.add_argument("--measurements", metavar="FILE", help="one row per nucleus of the whole store: .csv, or "
                        ".parquet with pyarrow (area, centroid, bbox, intensity, shape features, micrometres)")
    parser.add_argument("--summary", metavar="FILE", help="one row per image (.csv or .parquet)")
    parser.add_argument("--rois", choices=("qupath", "imagej"), help="nucleus outlines per image into OUT_DIR: "
                        "QuPath GeoJSON (<id>.geojson) or an ImageJ/Fiji RoiSet (<id>.zip)")
    parser.add_argument("--labels", action="store_true", help="16-bit instance labels (the default)")
    parser.add_argument("--masks", action="store_true", help="0/255 binary masks")
    parser.add_argument("--overlay", action="store_true", help="RGB images with nuclei outlined")
    parser.set_defaults(handler=_export)


# --- handlers --------------------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> NucleiStore:
    from nuclei.store.query import open_store  # zarr and fsspec only when a query runs

    return open_store(args.store)


def _print_json(data: object) -> None:
    from nuclei.cli.options import print_json

    print_json(data)


def _list(args: argparse.Namespace) -> int:
    rows = _open(args).summary(pattern=args.pattern, source=args.source, min_nuclei=args.min_nuclei,
                               max_nuclei=args.max_nuclei, model=args.model)
    if args.json:
        _print_json(rows)
    elif rows:
        print(_table(["id", "nuclei", "covered %", "shape", "model"], [_list_cells(r) for r in rows],
                     right={1, 2}))
    else:
        print("no images")
    return 0


def _show(args: argparse.Namespace) -> int:
    store = _open(args)
    record = store.metadata(args.id)
    columns = store.measurements(args.id)
    rows = _measurement_rows(columns)
    if args.json:
        _print_json({"metadata": record, "measurements": rows})
        return 0
    for key, value in _flatten(record):
        print(f"{key}: {printable(str(value))}")
    print()
    names = _shown_columns(list(columns), rows)
    if rows:
        cells = [[_cell(row[name]) for name in names] for row in rows[:SHOW_ROWS]]
        print(_table(names, cells, right=set(range(len(names)))))
    more = f" (first {SHOW_ROWS} shown; --json for all)" if len(rows) > SHOW_ROWS else ""
    hidden = len(columns) - len(names)
    print(f"{len(rows)} nuclei{more}" + (f"; {hidden} more columns with --json or export --measurements"
                                         if hidden else ""))
    return 0


def _stats(args: argparse.Namespace) -> int:
    stats = _open(args).stats()
    if args.json:
        _print_json(stats)
        return 0
    models = ", ".join(f"{version} ({count})" for version, count in stats["models"].items()) or "-"
    print(f"images: {stats['n_images']}")
    print(f"nuclei: {stats['n_nuclei']}")
    print(f"nuclei per image: mean {_number(stats['mean_nuclei_per_image'])}, "
          f"median {_number(stats['median_nuclei_per_image'])}")
    print(f"covered: mean {_percent(stats['mean_covered_fraction'])} %")
    print(f"models: {models}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from nuclei.store.query import EXPORT_KINDS

    store = _open(args)
    tables = _export_tables(args, store)
    if args.out_dir is None:
        if not tables:
            raise StoreError("export: give OUT_DIR for PNGs or --rois, or --measurements FILE / --summary FILE")
        return 0
    out = Path(args.out_dir)
    if args.rois:
        from nuclei.store.rois import export_rois

        written = export_rois(store.backend, out, args.rois)
        print(f"wrote {len(written)} {args.rois} ROI file{'s' if len(written) != 1 else ''} to {out}")
        if not any(getattr(args, k) for k in EXPORT_KINDS):
            return 0
    kinds: list[ExportKind] = [k for k in EXPORT_KINDS if getattr(args, k)] or ["labels"]
    for kind in kinds:
        target = out / kind if len(kinds) > 1 else out
        written = store.export(target, kind)
        print(f"wrote {len(written)} PNG{'s' if len(written) != 1 else ''} ({kind}) to {target}")
    return 0


def _export_tables(args: argparse.Namespace, store: NucleiStore) -> int:
    from nuclei.store.tables import IMAGE_COLUMNS, NUCLEUS_COLUMNS, image_rows, nucleus_rows, write_table

    done = 0
    if args.measurements:
        count = write_table(nucleus_rows(store.backend), NUCLEUS_COLUMNS, args.measurements)
        print(f"wrote {count} nuclei to {args.measurements}")
        done += 1
    if args.summary:
        count = write_table(image_rows(store.backend), IMAGE_COLUMNS, args.summary)
        print(f"wrote {count} images to {args.summary}")
        done += 1
    return done


# --- formatting ------------------------------------------------------------------------------------------


def _list_cells(row: dict[str, Any]) -> list[str]:
    shape = f"{row['height']}x{row['width']}" if row["height"] is not None else "-"
    return [_cell(row["id"]), _cell(row["n_nuclei"]), _percent(row["covered_fraction"]), shape,
            row["model_version"] or "-"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Columns padded to their widest cell; columns in `right` right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                            strict=True))]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


SHOW_COLUMNS = ("label", "area_px", "area_um2", "centroid_y_px", "centroid_x_px", "eccentricity", "solidity",
                "mean_intensity_raw", "integrated_intensity_raw")  # what fits a terminal; --json has every column


def _shown_columns(columns: list[str], rows: list[dict[str, int | float | None]]) -> list[str]:
    """The columns the text table shows: the terminal-sized few that this store has, micrometres only where
    known; an older entry's own columns all."""
    chosen = [c for c in SHOW_COLUMNS if c in columns and any(r[c] is not None for r in rows)]
    return chosen if "area_px" in chosen else columns


def _measurement_rows(columns: dict[str, Any]) -> list[dict[str, int | float | None]]:
    """Column arrays -> one dict per nucleus, as the exported tables show them (whole numbers as ints, NaN as
    None)."""
    from nuclei.store.tables import cell

    n = len(next(iter(columns.values()))) if columns else 0
    return [{name: cell(name, float(values[i])) for name, values in columns.items()} for i in range(n)]


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys: model.version, thresholds.core, ..."""
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _cell(value: Any) -> str:
    """A value as table text; ids, sources and names (the user's file names) printable only: an escape
    sequence in a file name is shown, never run by the terminal."""
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else printable(str(value))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
