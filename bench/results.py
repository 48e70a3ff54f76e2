"""One format for what every benchmark measured, so `make bench` can chart it.

A benchmark calls `figure(...)` once per figure and `save()` at the end; the file
`bench/out/NAME.json` then holds its figures (each with the anchor measured in the same
run and the ratio) and, optionally, the raw samples behind them (for distributions).
`bench/out/` is not committed: charts and docs/benchmarks.md are made from it.

    from results import Results
    out = Results("run")
    out.figure("start+exit /bin/true p50", 4.1, "ms", anchor="bwrap", anchor_value=5.0)
    out.samples("squish start+exit", samples_ms)
    out.save()
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(os.environ.get("SQUISH_BENCH_OUT", Path(__file__).resolve().parent / "out"))


@dataclass
class Results:
    name: str
    figures: list[dict[str, object]] = field(default_factory=list)
    raw: dict[str, list[float]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def figure(
        self,
        what: str,
        value: float,
        unit: str,
        *,
        anchor: str | None = None,
        anchor_value: float | None = None,
        lower_is_better: bool = True,
    ) -> None:
        """One measured figure; with an anchor, the ratio says how many times better squish is."""
        ratio = None
        if anchor_value is not None and value > 0 and anchor_value > 0:
            ratio = anchor_value / value if lower_is_better else value / anchor_value
        self.figures.append(
            {
                "what": what,
                "value": value,
                "unit": unit,
                "anchor": anchor,
                "anchor_value": anchor_value,
                "ratio": ratio,
                "lower_is_better": lower_is_better,
            }
        )

    def distribution(
        self,
        what: str,
        values: list[float],
        unit: str = "ms",
        *,
        anchor: str | None = None,
        anchor_values: list[float] | None = None,
    ) -> None:
        """The raw samples, and their p50 (against the anchor's p50) and p90 as figures."""
        self.samples(what, values, unit)
        base = statistics.median(anchor_values) if anchor_values else None
        middle = statistics.median(values)
        self.figure(f"{what} p50", middle, unit, anchor=anchor, anchor_value=base)
        self.figure(f"{what} p90", p90(values), unit)

    def report(self) -> None:
        """Print every figure with its anchor and the ratio, as `make bench` shows them."""
        for entry in self.figures:
            print(line(entry))

    def samples(self, what: str, values: list[float], unit: str = "ms") -> None:
        self.raw[what] = list(values)
        self.units[what] = unit

    def save(self) -> Path:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{self.name}.json"
        body = {
            "name": self.name,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cores": os.cpu_count(), "kernel": platform.release()},
            "figures": self.figures,
            "samples": self.raw,
            "sample_units": self.units,
        }
        path.write_text(json.dumps(body, indent=1) + "\n")
        return path


def p90(values: list[float]) -> float:
    """The 90th percentile (the last of ten quantiles; a single sample is its own)."""
    return statistics.quantiles(values, n=10)[8] if len(values) > 1 else values[0]


def line(entry: dict[str, object]) -> str:
    """One figure as text: its value, and its anchor and the ratio when it has one (the
    ratio is how many times better squish did: above 1, squish is ahead)."""
    text = f"{entry['what']}: {entry['value']:.4g} {entry['unit']}"
    if entry.get("anchor_value") is not None:
        text += f"   anchor {entry['anchor']}: {entry['anchor_value']:.4g} {entry['unit']}"
    if entry.get("ratio") is not None:
        text += f"   ratio {entry['ratio']:.2f}x"
    return text


def parse(parser: argparse.ArgumentParser, **quick: object) -> argparse.Namespace:
    """The bench's arguments, with ``--quick`` (what ``make bench QUICK=1`` passes): the
    defaults named in ``quick`` become those smaller ones, for a fast check that the bench
    still runs rather than figures to quote. An option given explicitly wins."""
    parser.add_argument("--quick", action="store_true", help="fewer runs, for a fast check")
    args = parser.parse_args()
    if args.quick:
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args
