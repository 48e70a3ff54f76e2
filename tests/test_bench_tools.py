"""The benchmarks' own tools: the figures' format, --quick, the suite's order, the charts.

They run no benchmark: bench/results.py, bench/suite.py and bench/charts.py are fed
small made-up inputs here (the charts only where matplotlib, the bench extra, is
installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.append(str(BENCH))  # the benches are scripts, not a package

import results  # noqa: E402
import suite  # noqa: E402


def test_a_figure_ratio_says_how_many_times_better_squish_is() -> None:
    out = results.Results("t")
    out.figure("start", 2.0, "ms", anchor="bwrap", anchor_value=6.0)
    out.figure(
        "throughput", 400.0, "MiB/s", anchor="loopback", anchor_value=800.0, lower_is_better=False
    )
    out.figure("alone", 1.0, "s")
    assert [entry["ratio"] for entry in out.figures] == [3.0, 0.5, None]
    assert "ratio 3.00x" in results.line(out.figures[0])
    assert "anchor" not in results.line(out.figures[2])


def test_a_distribution_keeps_its_samples_and_compares_p50s(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(results, "OUT", tmp_path)
    out = results.Results("t")
    out.distribution("start", [1.0, 2.0, 3.0], anchor="bwrap", anchor_values=[4.0, 6.0, 8.0])
    saved = json.loads(out.save().read_text())
    assert saved["samples"] == {"start": [1.0, 2.0, 3.0]}
    assert saved["sample_units"] == {"start": "ms"}
    p50, p90 = saved["figures"]
    assert (p50["what"], p50["value"], p50["anchor_value"], p50["ratio"]) == (
        "start p50",
        2.0,
        6.0,
        3.0,
    )
    assert p90["what"] == "start p90" and p90["anchor"] is None


def test_quick_replaces_defaults_but_not_what_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed(*argv: str) -> argparse.Namespace:
        monkeypatch.setattr(sys, "argv", ["bench", *argv])
        parser = argparse.ArgumentParser()
        parser.add_argument("-n", "--runs", type=int, default=100)
        parser.add_argument("--idle", type=float, default=10.0)
        return results.parse(parser, runs=5, idle=1.0)

    assert (parsed().runs, parsed().idle) == (100, 10.0)
    assert (parsed("--quick").runs, parsed("--quick").idle) == (5, 1.0)
    assert (parsed("--quick", "-n", "7").runs, parsed("--quick", "-n", "7").idle) == (7, 1.0)


def test_the_suite_runs_known_benches_first_then_new_ones_it_finds(tmp_path: Path) -> None:
    bench = 'import argparse\n# --quick\nif __name__ == "__main__":\n    pass\n'
    for name in ("zeta", "hostile", "alpha", "run"):
        (tmp_path / f"{name}.py").write_text(bench)
    (tmp_path / "helper.py").write_text("def f() -> None: ...\n")
    (tmp_path / "slow.py").write_text('if __name__ == "__main__":\n    pass\n')
    (tmp_path / "suite.py").write_text(bench)
    found = [path.stem for path in suite.benches([], tmp_path)]
    assert found == ["run", "hostile", "alpha", "zeta"]
    assert [path.stem for path in suite.benches(["zeta", "run"], tmp_path)] == ["run", "zeta"]
    assert suite.not_benches(tmp_path) == ["slow.py"]


def test_a_bench_that_takes_its_arguments_through_parse_is_run(tmp_path: Path) -> None:
    bench = (
        "import argparse\nfrom results import Results, parse\n"
        'if __name__ == "__main__":\n    parse(argparse.ArgumentParser(), runs=2)\n'
    )
    (tmp_path / "parsed.py").write_text(bench)
    unparsed = 'from results import Results\nif __name__ == "__main__":\n    pass\n'
    (tmp_path / "slow.py").write_text(unparsed)
    assert [path.stem for path in suite.benches([], tmp_path)] == ["parsed"]
    assert suite.not_benches(tmp_path) == ["slow.py"]


def test_every_bench_in_the_tree_is_run_by_the_suite() -> None:
    found = {path.stem for path in suite.benches([])}
    assert set(suite.ORDER) <= found
    assert not found & {"results", "charts", "suite"}
    assert suite.not_benches() == []


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="no bench extra")
def test_charts_of_microseconds_and_of_seconds_are_two_files() -> None:
    import charts

    assert charts.slug("µs") != charts.slug("s")


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="no bench extra")
def test_charts_are_drawn_from_whatever_was_recorded_and_linked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import charts

    out, docs = tmp_path / "out", tmp_path / "docs"
    docs.mkdir()
    page = docs / "benchmarks.md"
    page.write_text(f"# B\n\n{charts.BEGIN}\n![old](charts/gone.png)\n{charts.END}\n\nrest\n")
    for name, module in ((results, "OUT"), (charts, "OUT")):
        monkeypatch.setattr(name, module, out)
    monkeypatch.setattr(charts, "CHARTS", docs / "charts")
    monkeypatch.setattr(charts, "PAGE", page)
    (docs / "charts").mkdir()
    (docs / "charts" / "stale.png").write_bytes(b"")
    first = results.Results("newbench")
    first.distribution("start", [1.0, 2.0, 30.0], anchor="bwrap", anchor_values=[2.0, 3.0])
    first.samples("bwrap", [2.0, 3.0])
    first.samples("rate", [5.0, 6.0], "MiB/s")
    first.save()
    charts.main()
    drawn = sorted(path.name for path in (docs / "charts").iterdir())
    assert drawn == ["against-anchor-ms.png", "newbench-mib-s.png", "newbench-ms.png", "ratios.png"]
    assert all((docs / "charts" / name).read_bytes().startswith(b"\x89PNG") for name in drawn)
    text = page.read_text()
    assert "gone.png" not in text and text.endswith(f"{charts.END}\n\nrest\n")
    assert all(f"(charts/{name})" in text for name in drawn)
