"""nuclei's benchmark suite, one entry point (run from the repository root with the project's venv):

    python -m benchmarks list                       # every benchmark, speed and quality, with its summary
    python -m benchmarks NAME [ARGS]                # run one; its --help says what it measures
    python -m benchmarks --note "machine shared" startup --counts 1 334
    python -m benchmarks --save-as startup-workers startup --counts 334 --workers 2   # results/startup-workers.json
    python -m benchmarks report [--check]           # BENCHMARKS.md's tables from benchmarks/results/*.json

Each run writes ``benchmarks/results/NAME.json`` (figures, the commit, CPU, load and library versions);
``report`` generates the marked sections of BENCHMARKS.md and README.md from those files.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _list() -> int:
    from benchmarks.registry import benchmarks

    found = benchmarks()
    for kind in ("speed", "quality"):
        print(f"{kind}:")
        for bench in (b for b in found.values() if b.kind == kind):
            print(f"  {bench.name:<16} {bench.summary()[:100]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmarks import harness
    from benchmarks.registry import benchmarks

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--note", default="", help="said in the result's generated table (e.g. the machine shared)")
    parser.add_argument("--save-as", default="", metavar="RESULT",
                        help="write results/RESULT.json instead of results/NAME.json (one benchmark, other arguments)")
    parser.add_argument("name", help="'list', 'report', or a benchmark's name")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    args = parser.parse_args(argv)
    if args.name == "list":
        return _list()
    if args.name == "report":
        from benchmarks.report import main as report

        return report(args.args)
    found = benchmarks()
    if args.name not in found:
        parser.error(f"no benchmark {args.name!r}; `python -m benchmarks list` shows them")
    bench = found[args.name]
    harness.CONTEXT.update(kind=bench.kind, note=args.note, command=shlex.join([bench.name, *args.args]),
                           save_as=args.save_as)
    bench.load().main(args.args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
