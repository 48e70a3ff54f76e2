"""One format for what every benchmark measured, so `make bench` can chart it.

A benchmark calls `record(...)` once per figure and `save("NAME")` at the end; the file
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

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(os.environ.get("SQUISH_BENCH_OUT", Path(__file__).resolve().parent / "out"))


@dataclass
class Results:
    name: str
    figures: list[dict[str, object]] = field(default_factory=list)
    raw: dict[str, list[float]] = field(default_factory=dict)

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

    def samples(self, what: str, values: list[float]) -> None:
        self.raw[what] = list(values)

    def save(self) -> Path:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{self.name}.json"
        body = {
            "name": self.name,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cores": os.cpu_count(), "kernel": platform.release()},
            "figures": self.figures,
            "samples": self.raw,
        }
        path.write_text(json.dumps(body, indent=1) + "\n")
        return path
