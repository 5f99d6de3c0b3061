"""What every benchmark shares: where the data is, paired interleaved measurements with medians and a ratio
against a baseline measured in the same run, and the record each run writes (``benchmarks/results/NAME.json``,
with the commit, the machine, its load and the library versions) from which ``python -m benchmarks report``
generates BENCHMARKS.md's tables.

    from benchmarks import harness

    record = harness.Record("model_speed", args)
    found = harness.interleave({"old": run_old, "new": run_new}, rounds=5, baseline="old")
    record.table(["variant", "ms", "ratio"], [[v, found.median(v) * 1e3, found.ratio(v)] for v in found.names],
                 formats=["", ".1f", ".2f"])
    record.write()
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The developer data sets beside the checkout (not on users' machines); $NUCLEI_BENCHMARK_DATA points elsewhere.
SHARED = Path(os.environ.get("NUCLEI_BENCHMARK_DATA", REPO.parent / "shared" / "data"))
DEV = SHARED / "dsb2018-dev"
BBBC039 = SHARED / "bbbc039"
MODELS = REPO / "nuclei" / "assets" / "models"
RESULTS = Path(os.environ.get("NUCLEI_BENCHMARK_RESULTS", Path(__file__).resolve().parent / "results"))
# The distributions whose versions decide a figure (ONNX Runtime ships as onnxruntime-gpu here, see STACK.md).
LIBRARIES = ("nuclei", "numpy", "onnxruntime-gpu", "onnxruntime", "opencv-python-headless", "scikit-image",
             "scipy", "edt", "zarr", "dask", "distributed", "prefect", "tensorflow", "keras", "onnx", "psutil")
Measure = float | Mapping[str, float]
# Set by ``python -m benchmarks`` for the run's record: the benchmark's kind, the command, the operator's --note
# and --save-as (another name for the result, so runs of one benchmark with other arguments sit side by side).
CONTEXT: dict[str, str] = {"kind": "", "note": "", "command": "", "save_as": ""}
# Every comparison measured in this process, in order: a Record keeps the raw rounds of those made after it began.
MEASURED: list[Comparison] = []


def cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0))


def require(path: Path, what: str = "developer data") -> Path:
    """``path``, or exit with the reason: the benchmarks need ../shared/data, which users do not have."""
    if not path.exists():
        raise SystemExit(f"{path} is absent: this benchmark needs {what} ($NUCLEI_BENCHMARK_DATA moves it)")
    return path


def dev_ids(size: str = "256x256", limit: int | None = None) -> list[str]:
    """Ids of the DSB2018 development images of ``size`` (HxW; 'mixed': every size), in manifest order."""
    with open(require(DEV) / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    if size != "mixed":
        rows = [r for r in rows if f"{r['height']}x{r['width']}" == size]
    return [r["id"] for r in rows[:limit]]


def dev_paths(size: str = "256x256", limit: int | None = None) -> list[Path]:
    """The image files of :func:`dev_ids`."""
    return [DEV / "images" / f"{i}.png" for i in dev_ids(size, limit)]


def dev_images(limit: int | None = None, size: str = "256x256",
               read: Callable[[Path], Any] | None = None) -> list[Any]:
    """The DSB2018 development images of :func:`dev_ids`, read as files are (``read_raw``) unless ``read``."""
    from nuclei.io.images import read_raw

    reader = read or read_raw
    return [reader(p) for p in dev_paths(size, limit)]


def training_batch(crop: int, n: int = 16) -> tuple[Any, Any]:
    """``n`` random crops and targets: foreground, core, then the per-pixel loss weight (`make_targets`' layout),
    what a training step of the shipped recipe takes."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.random((n, crop, crop, 3), dtype=np.float32)
    targets = np.concatenate([(rng.random((n, crop, crop, 2)) > 0.7), np.ones((n, crop, crop, 1))], axis=-1)
    return images, targets.astype(np.float32)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (Linux reports KiB); picklable for ``client.run``."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` as a measurement: its wall seconds."""

    def measure() -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return measure


def _as_dict(value: Measure) -> dict[str, float]:
    return {"seconds": float(value)} if isinstance(value, int | float) else {k: float(v) for k, v in value.items()}


@dataclass
class Comparison:
    """Paired measurements: ``samples[name][round]`` is a dict of measures ("seconds" unless a variant returns
    several), every variant measured once per round, so round ``r`` of each saw the same machine load."""

    baseline: str
    samples: dict[str, list[dict[str, float]]]

    @property
    def names(self) -> list[str]:
        return list(self.samples)

    def values(self, name: str, key: str = "seconds") -> list[float]:
        return [s[key] for s in self.samples[name]]

    def median(self, name: str, key: str = "seconds") -> float:
        return statistics.median(self.values(name, key))

    def best(self, name: str, key: str = "seconds") -> float:
        return min(self.values(name, key))

    def paired_ratios(self, name: str, key: str = "seconds", against: str | None = None) -> list[float]:
        """Each round's measure over the baseline's in the same round."""
        base = self.values(against or self.baseline, key)
        return [v / b for v, b in zip(self.values(name, key), base, strict=True)]

    def ratio(self, name: str, key: str = "seconds", against: str | None = None) -> float:
        """The median of the paired ratios: below 1, ``name`` took less than the baseline."""
        return statistics.median(self.paired_ratios(name, key, against))

    def spread(self, name: str, key: str = "seconds") -> str:
        """The lowest and highest paired ratio, to show how noisy the rounds were ("0.95-1.10")."""
        ratios = self.paired_ratios(name, key)
        return f"{min(ratios):.2f}-{max(ratios):.2f}"

    def best_ratio(self, name: str, key: str = "seconds") -> float:
        """Best round over the baseline's best round (for "best of N" benchmarks)."""
        return self.best(name, key) / self.best(self.baseline, key)


def interleave(variants: Mapping[str, Callable[[], Measure]], rounds: int, baseline: str | None = None,
               warmup: bool = False) -> Comparison:
    """Measure every variant once per round, the order reversed every other round (A B, B A, ...) so neither
    is always first after the other's caches; ``warmup`` runs each once untimed first. A variant returns its
    seconds or a dict of measures."""
    if not variants:
        raise ValueError("no variants to measure")
    baseline = baseline or next(iter(variants))
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not one of {list(variants)}")
    if warmup:
        for run in variants.values():
            run()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    order = list(variants)
    for round_ in range(rounds):
        for name in order if round_ % 2 == 0 else reversed(order):
            samples[name].append(_as_dict(variants[name]()))
    MEASURED.append(Comparison(baseline, samples))
    return MEASURED[-1]


@dataclass
class Table:
    """One generated table: raw values, each column's format spec ('' for text, '.2f', ',d', '.0%')."""

    columns: list[str]
    rows: list[list[Any]]
    formats: list[str] = field(default_factory=list)
    title: str = ""

    def markdown(self) -> str:
        formats = self.formats or [""] * len(self.columns)
        lines = [f"**{self.title}**", ""] if self.title else []
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(v, f) for v, f in zip(row, formats, strict=True)) + " |")
        return "\n".join(lines)


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool) and spec:
        return format(value, spec)
    return str(value)


def machine() -> dict[str, Any]:
    """The CPU, cores, memory and GPU a figure was measured on."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": cores(),
                            "cpus_on_machine": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        info["cpu"] = names[0] if names else info["cpu"]
        info["cpu_features"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
                                if f in flags]
        memory = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        info["memory_gib"] = round(int(memory.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return info


def commit() -> dict[str, Any]:
    """HEAD and the files that differ from it under nuclei/, flows/ and benchmarks/ (what the figure ran)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "nuclei", "flows", "benchmarks").splitlines()
    changed = [line for line in changed if "benchmarks/results/" not in line]
    return {"sha": git("rev-parse", "HEAD") or None, "subject": git("log", "-1", "--format=%s")[:100] or None,
            "uncommitted_files": len(changed)}


def libraries() -> dict[str, str]:
    """Installed versions of the libraries that decide the figures (absent ones left out)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Record:
    """One run's results: tables and named figures, written with its metadata as ``RESULTS/NAME.json``."""

    def __init__(self, name: str, params: object = None, kind: str | None = None) -> None:
        self.name = CONTEXT["save_as"] or name
        self.kind = kind or CONTEXT["kind"]
        self.params = dict(vars(params)) if params is not None and hasattr(params, "__dict__") else params or {}
        self.tables: list[Table] = []
        self.figures: dict[str, Any] = {}
        self.notes: list[str] = []
        self.started = _now()
        self._clock = time.perf_counter()
        self._load = os.getloadavg()
        self._measured_from = len(MEASURED)

    def table(self, columns: list[str], rows: Iterable[list[Any]], formats: list[str] | None = None,
              title: str = "") -> Table:
        table = Table(columns, [list(r) for r in rows], formats or [], title)
        self.tables.append(table)
        return table

    def figure(self, key: str, value: Any) -> Any:
        """A named figure other documents quote (README: ``<!-- figure:NAME.KEY -->``)."""
        self.figures[key] = value
        return value

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind,
            "command": "python -m benchmarks " + (CONTEXT["command"] or self.name),
            "params": _jsonable(self.params), "started_utc": self.started, "finished_utc": _now(),
            "seconds": round(time.perf_counter() - self._clock, 1),
            "load": {"cores": cores(), "before": [round(v, 2) for v in self._load],
                     "after": [round(v, 2) for v in os.getloadavg()]},
            "note": CONTEXT["note"], "notes": self.notes,
            "machine": machine(), "commit": commit(), "libraries": libraries(),
            "tables": [asdict(t) for t in self.tables], "figures": _jsonable(self.figures),
            "measurements": [asdict(c) for c in MEASURED[self._measured_from:]],  # every round, as measured
        }

    def write(self, results: Path | None = None) -> Path:
        """Write the JSON (and print the tables): the only place a benchmark's figures go."""
        folder = results or RESULTS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        for table in self.tables:
            print(table.markdown(), end="\n\n")
        print(f"wrote {path}", file=sys.stderr)
        return path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
