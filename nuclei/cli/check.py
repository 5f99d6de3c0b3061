"""`nuclei check STORE [--repair]`: is every visible entry whole? Exit 1 naming the damaged ones."""

from __future__ import annotations

import argparse

from nuclei.cli.options import print_json
from nuclei.core.text import printable


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("check", help="verify a store's entries (records, arrays, counts); --repair hides "
                            "damaged ones so the next run segments them again")
    parser.add_argument("store", help="results store (folder or fsspec URL)")
    parser.add_argument("--repair", action="store_true",
                        help="hide damaged entries, delete unreadable records, move stray index files to STORE/aside/ "
                        "(entries being written are left alone)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nuclei.store.check import check

    report = check(args.store, repair=args.repair)  # repair acts under each entry's lock, never racing a run
    if args.json:
        print_json({"checked": report.checked, "damaged": report.damaged,
                    "unreadable_records": report.unreadable_records, "being_written": report.being_written,
                    "stray_files": report.stray_files, "moved_aside": report.moved_aside,
                    "repaired": bool(args.repair)})
    else:
        print(f"{report.checked} entries checked, {len(report.damaged)} damaged, "
              f"{len(report.unreadable_records)} unreadable records, {len(report.stray_files)} stray index files, "
              f"{len(report.being_written)} being written")
        for image_id, reason in report.damaged.items():
            print(f"  damaged: {printable(image_id)}: {printable(reason)}")
        for path in report.unreadable_records:
            print(f"  unreadable record: {printable(path)}")
        for path, reason in report.stray_files.items():
            aside = f" (moved to {printable(report.moved_aside[path])})" if path in report.moved_aside else ""
            print(f"  stray index file: {printable(path)}: {printable(reason)}{aside}")
        for image_id in report.being_written:
            print(f"  being written by a run (not checked): {printable(image_id)}")
    if args.repair and not report.ok:
        print("repaired: damaged entries hidden, stray index files moved aside; the next `nuclei segment` run "
              "writes the hidden entries again")
        return 0
    return 0 if report.ok else 1
