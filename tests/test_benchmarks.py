"""The benchmark suite's machinery, without running a model: the registry lists every script, the harness pairs,
medians and ratios measurements correctly, and `report` generates a marked section from a result's JSON."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from benchmarks import harness, registry, report
from benchmarks.__main__ import main as suite

SPEED = {"bf16_training", "flops", "fsync_cost", "large_image", "model_speed", "ort_options", "postprocess",
         "query", "scaling", "slide", "startup", "store_scale", "throughput", "training_cost"}
QUALITY = {"compare_models", "diameter", "diameter_default", "finetune", "microscope", "mosaic", "stained",
           "suggest"}


def test_registry_lists_every_script_once_with_its_kind() -> None:
    found = registry.benchmarks()
    assert {n for n, b in found.items() if b.kind == "speed"} == SPEED
    assert {n for n, b in found.items() if b.kind == "quality"} == QUALITY
    scripts = {p.stem for kind in registry.KINDS for p in (registry.HERE / kind).glob("*.py")} - {"__init__"}
    assert scripts == set(found)
    assert {p.name for p in registry.HERE.glob("[!_]*.py")} == {"harness.py", "registry.py", "report.py"}


@pytest.mark.parametrize("name", sorted(SPEED | QUALITY))
def test_each_script_has_a_summary_and_main_and_uses_the_harness(name: str) -> None:
    bench = registry.benchmarks()[name]
    source = bench.path.read_text()
    tree = ast.parse(source)
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains and [a.arg for a in mains[0].args.args] == ["argv"]
    assert bench.summary() and f"python -m benchmarks {name}" in source
    assert "sys.path" not in source and '"shared"' not in source  # the data path lives in the harness only
    assert "harness.Record(" in source and "record.write()" in source  # its figures go to results/NAME.json


def test_list_shows_every_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert suite(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SPEED | QUALITY)
    assert out.index("speed:") < out.index("quality:")


def test_interleave_pairs_rounds_in_alternating_order_and_takes_medians_of_paired_ratios() -> None:
    calls: list[str] = []
    slow = iter([4.0, 9.0, 5.0, 4.5, 100.0])  # one outlier round: medians ignore it
    fast = iter([2.0, 3.0, 2.5, 1.5, 2.0])

    def measure(name: str, values: object) -> object:
        return lambda: calls.append(name) or next(values)  # type: ignore[call-overload]

    found = harness.interleave({"base": measure("base", slow), "new": measure("new", fast)}, rounds=5)
    assert calls == ["base", "new", "new", "base", "base", "new", "new", "base", "base", "new"]
    assert found.baseline == "base" and found.names == ["base", "new"]
    assert found.median("base") == 5.0 and found.median("new") == 2.0
    assert found.paired_ratios("new") == [0.5, 3.0 / 9.0, 0.5, 1.5 / 4.5, 0.02]
    assert found.ratio("new") == pytest.approx(1 / 3) and found.ratio("base") == 1.0
    assert found.best_ratio("new") == 1.5 / 4.0
    assert found.spread("new") == "0.02-0.50"


def test_interleave_keeps_several_measures_and_a_named_baseline() -> None:
    values = iter([{"wall": 2.0, "cpu": 1.0}, {"wall": 1.0, "cpu": 2.0}] * 3)
    found = harness.interleave({"a": lambda: next(values), "b": lambda: next(values)}, rounds=3, baseline="b")
    assert found.values("a", "wall") == [2.0, 1.0, 2.0]  # the second round runs b first
    assert found.ratio("a", "wall") == 2.0 and found.ratio("a", "cpu") == 0.5
    with pytest.raises(ValueError):
        harness.interleave({"a": lambda: 1.0}, rounds=1, baseline="z")


def test_warmup_runs_each_variant_once_untimed() -> None:
    runs = {"a": 0}

    def run() -> float:
        runs["a"] += 1
        return float(runs["a"])

    found = harness.interleave({"a": run}, rounds=2, warmup=True)
    assert runs["a"] == 3 and found.values("a") == [2.0, 3.0]


def _result(tmp_path: Path) -> Path:
    record = harness.Record("fake", {"rounds": 3}, kind="speed")
    found = harness.interleave({"loop": lambda: 2.0, "ours": lambda: 3.0}, rounds=3)
    record.table(["variant", "s", "ratio"], [[n, found.median(n), found.ratio(n)] for n in found.names],
                 ["", ".2f", ".2f"])
    record.figure("ratio", found.ratio("ours"))
    return record.write(tmp_path)


def test_record_writes_figures_with_commit_machine_and_versions(tmp_path: Path) -> None:
    result = json.loads(_result(tmp_path).read_text())
    assert result["name"] == "fake" and result["kind"] == "speed" and result["figures"] == {"ratio": 1.5}
    assert result["tables"][0]["rows"] == [["loop", 2.0, 1.0], ["ours", 3.0, 1.5]]
    assert result["machine"]["cores"] >= 1 and "numpy" in result["libraries"]
    assert len(result["commit"]["sha"]) == 40 and len(result["load"]["before"]) == 3
    assert result["measurements"] == [{"baseline": "loop", "samples": {"loop": [{"seconds": 2.0}] * 3,
                                                                       "ours": [{"seconds": 3.0}] * 3}}]


def test_report_rewrites_marked_sections_and_figures_and_keeps_the_rest(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _result(results)
    doc = tmp_path / "DOC.md"
    doc.write_text("# Doc\n\nintro\n\n<!-- results:fake -->\nold table\n<!-- /results:fake -->\n\n"
                   "ours is <!-- figure:fake.ratio:.2f -->9.99<!-- /figure -->x the loop.\n\n"
                   "<!-- results:absent -->\nearlier run's table\n<!-- /results:absent -->\ntail\n")
    assert report.main([str(doc), "--results", str(results), "--check"]) == 1  # stale: nothing written
    assert "old table" in doc.read_text()
    assert report.main([str(doc), "--results", str(results)]) == 0
    text = doc.read_text()
    assert "old table" not in text and "| ours | 3.00 | 1.50 |" in text
    assert "ours is <!-- figure:fake.ratio:.2f -->1.50<!-- /figure -->x" in text
    assert "earlier run's table" in text and text.startswith("# Doc\n\nintro\n") and text.endswith("tail\n")
    assert "results/fake.json" in text and "python -m benchmarks fake" in text
    assert report.main([str(doc), "--results", str(results), "--check"]) == 0  # generated: current


def test_a_marker_quoted_in_prose_does_not_swallow_the_text_up_to_a_real_one(tmp_path: Path) -> None:
    _result(tmp_path)
    text = ("Markers look like `<!-- figure:NAME.KEY -->` in prose.\n\n"
            "ratio <!-- figure:fake.ratio:.1f -->?<!-- /figure -->\n")
    new, generated, _ = report.rewrite(text, report.load_results(tmp_path))
    assert new == text.replace("-->?<!--", "-->1.5<!--") and generated == {"fake"}


def test_a_figure_can_be_a_dotted_path_into_a_nested_one() -> None:
    results = {"fake": {"figures": {"results": {"scores": {"random": {"ap50": 0.8404}}}, "a.b": 2}}}
    text = ("random <!-- figure:fake.results.scores.random.ap50:.3f -->?<!-- /figure -->, flat "
            "<!-- figure:fake.a.b -->?<!-- /figure -->, none <!-- figure:fake.results.scores.spread.ap50 -->?"
            "<!-- /figure -->")
    new, generated, kept = report.rewrite(text, results)
    assert "-->0.840<!--" in new and "-->2<!--" in new and generated == {"fake"}
    assert kept == {"fake.results.scores.spread.ap50"} and new.endswith("-->?<!-- /figure -->")


def test_a_figure_can_be_a_cell_of_the_results_own_table() -> None:
    """Prose quotes a table's cell as generated (`tables.TABLE.rows.ROW.COLUMN`), never pasted from it."""
    results = {"fake": {"figures": {}, "tables": [{"columns": ["model", "AP"], "rows": [["a", 0.7162], ["b", 0.846]]}]}}
    text = ("b <!-- figure:fake.tables.0.rows.1.1:.3f -->?<!-- /figure -->, out of range "
            "<!-- figure:fake.tables.0.rows.2.1 -->?<!-- /figure -->")
    new, generated, kept = report.rewrite(text, results)
    assert "-->0.846<!--" in new and generated == {"fake"} and kept == {"fake.tables.0.rows.2.1"}


def test_save_as_names_the_result_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(harness.CONTEXT, "save_as", "fake-other")
    assert harness.Record("fake").write(tmp_path).name == "fake-other.json"


def test_the_repository_documents_are_current_with_their_results() -> None:
    """BENCHMARKS.md and README.md hold what `python -m benchmarks report` generates from results/*.json."""
    results = report.load_results(harness.RESULTS)
    for document in report.DOCUMENTS:
        text = document.read_text()
        assert report.unparsed(text) == 0, f"{document.name}: a figure marker the report cannot read"
        new, _, kept = report.rewrite(text, results)
        assert new == text, f"run `python -m benchmarks report`: {document.name}"
        wrong = sorted(name for name in kept if name.split(".")[0] in results)
        assert not wrong, f"{document.name} quotes figures its results do not hold: {wrong}"
