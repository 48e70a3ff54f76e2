"""PNG charts of whatever the benches recorded, for docs/benchmarks.md.

Reads every bench/out/NAME.json (bench/results.py) and draws into docs/charts/:
- NAME-UNIT.png for each bench with raw samples: their distributions (one curve per
  series: the share of samples at or below each value), anchors included, so a start
  latency is seen against bwrap and podman and each replacement's gap is one point;
- against-anchor-UNIT.png: every figure that has an anchor, its value next to the
  anchor's (throughput against loopback, for one);
- ratios.png: every figure's ratio against its anchor on one axis (above 1: squish ahead).
A new bench that records figures or samples appears without any edit here. The folder
is emptied first (every chart comes from this run's files), and the "Pictures" block of
docs/benchmarks.md is rewritten to link the charts drawn.

    python bench/charts.py
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullFormatter
from results import OUT

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHARTS = DOCS / "charts"
PAGE = DOCS / "benchmarks.md"
BEGIN = "<!-- pictures: written by bench/charts.py from bench/out/*.json -->"
END = "<!-- end of pictures -->"

Document = dict[str, Any]
# What a known bench's samples show; any other bench is named by its file.
TITLES = {
    "run": "Container start-up against bwrap and podman",
    "replace": "Replacements: the longest time without an answer, each",
    "reconcile": "The loop: file dropped or edited until the port answers",
    "networks": "Bridge networks",
    "responder": "DNS responder against a plain UDP echo",
    "gitops": "Git source: push until the new page answers",
    "logflood": "list + inspect during a log flood",
    "startup": "Start + exit of /bin/true, squish and bwrap in turns",
    "dataplane": "Host forwards against the host's loopback",
    "procview": "The /proc view against the kernel's /proc",
    "watch": "The folder watch: written until its batch ends",
}


def documents() -> list[Document]:
    """The benches' files (a file whose name starts with _ is not a bench's), in the
    order the suite ran them, else by name."""
    paths = sorted(OUT.glob("*.json"))
    found = [json.loads(path.read_text()) for path in paths if not path.name.startswith("_")]
    order = list(suite_record().get("seconds", {}))
    return sorted(found, key=lambda d: order.index(d["name"]) if d["name"] in order else len(order))


def suite_record() -> dict[str, Any]:
    """What bench/suite.py wrote about its run, if it ran."""
    path = OUT / "_suite.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def run_note() -> str:
    """The machine's load over the run, and a mark on every chart of a `make bench
    QUICK=1` run (too few samples to quote)."""
    record = suite_record()
    load = record.get("load")
    note = f"; load {load[0]:.1f} to {load[1]:.1f}" if load else ""
    return note + ("; QUICK run: few samples" if record.get("quick") else "")


def slug(text: str) -> str:
    """``text`` as part of a file name (µs is not s)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("µ", "u")).strip("-") or "x"


def label(text: str, width: int = 48) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def subtitle(document: Document) -> str:
    machine = document.get("machine", {})
    cores = machine.get("cores")
    return f"bench/{document['name']}.py, {document['when']}, {cores} cores{run_note()}"


def save(figure: Any, name: str, title: str, drawn: list[tuple[str, str]]) -> None:
    figure.tight_layout()
    figure.savefig(CHARTS / name, dpi=100)
    plt.close(figure)
    drawn.append((title, name))


def distributions(document: Document, drawn: list[tuple[str, str]]) -> None:
    """One chart per unit of the document's samples: each series as the share of its
    samples at or below each value."""
    units = document.get("sample_units", {})
    anchors = {entry.get("anchor") for entry in document.get("figures", [])}
    by_unit: dict[str, list[str]] = {}
    for what in document.get("samples", {}):
        by_unit.setdefault(units.get(what, "ms"), []).append(what)
    for unit, names in by_unit.items():
        figure, axes = plt.subplots(figsize=(9, 4.8))
        for what in names:
            values = sorted(document["samples"][what])
            if values:
                shares = [(index + 1) / len(values) for index in range(len(values))]
                style = "--" if what in anchors else "-"
                name = f"{what} (anchor)" if what in anchors else what
                axes.step(values, shares, style, where="post", marker=".", label=label(name, 60))
        scale(axes, [v for what in names for v in document["samples"][what]])
        axes.set_xlabel(unit)
        axes.set_ylabel("share of samples at or below")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
        title = f"{TITLES.get(document['name'], document['name'])} ({unit})"
        axes.set_title(f"{title}\n{subtitle(document)}", fontsize=10)
        save(figure, f"{document['name']}-{slug(unit)}.png", title, drawn)


def scale(axes: Axes, values: list[float]) -> None:
    """A log axis when the values span more than a factor of 20 (a fast squish and a
    slow anchor on one chart)."""
    positive = [value for value in values if value > 0]
    if positive and max(positive) / min(positive) > 20:
        axes.set_xscale("log")


def when(documents: list[Document]) -> str:
    """The span of the runs' dates, for a chart drawn from several benches."""
    dates = sorted(document["when"] for document in documents)
    if not dates:
        return ""
    span = f"{dates[0][:10]} {dates[0][11:16]} to {dates[-1][11:16]} UTC"
    return f"measured {span}{run_note()}"


def anchored(documents: list[Document]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (document["name"], entry)
        for document in documents
        for entry in document.get("figures", [])
        if entry.get("anchor_value") is not None
    ]


def against_anchors(documents: list[Document], drawn: list[tuple[str, str]]) -> None:
    """Per unit: every anchored figure's value next to its anchor's."""
    by_unit: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, entry in anchored(documents):
        by_unit.setdefault(entry["unit"], []).append((name, entry))
    for unit, entries in by_unit.items():
        figure, axes = plt.subplots(figsize=(9, 1.2 + 0.9 * len(entries)))
        rows = range(len(entries))
        squish = [entry["value"] for _, entry in entries]
        anchors = [entry["anchor_value"] for _, entry in entries]
        axes.barh([r + 0.2 for r in rows], squish, height=0.4, label="squish", color="tab:blue")
        axes.barh([r - 0.2 for r in rows], anchors, height=0.4, label="anchor", color="tab:gray")
        for row, (_, entry) in zip(rows, entries, strict=True):
            axes.annotate(
                label(str(entry["anchor"]), 40),
                (entry["anchor_value"], row - 0.2),
                fontsize=6,
                va="center",
                xytext=(3, 0),
                textcoords="offset points",
            )
        axes.set_yticks(list(rows), [label(f"{n}: {e['what']}", 40) for n, e in entries])
        axes.tick_params(axis="y", labelsize=7)
        scale(axes, squish + anchors)
        axes.set_xlabel(unit)
        axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
        axes.invert_yaxis()
        title = f"Figures against their anchors ({unit})"
        axes.set_title(f"{title}\n{when(documents)}", fontsize=10)
        save(figure, f"against-anchor-{slug(unit)}.png", title, drawn)


def ratios(documents: list[Document], drawn: list[tuple[str, str]]) -> None:
    """Every figure's ratio against its anchor, one bar each, 1 marked."""
    entries = [(n, e) for n, e in anchored(documents) if e.get("ratio") is not None]
    if not entries:
        return
    figure, axes = plt.subplots(figsize=(9, 1.2 + 0.5 * len(entries)))
    values = [entry["ratio"] for _, entry in entries]
    colours = ["tab:green" if value >= 1 else "tab:red" for value in values]
    axes.barh(range(len(entries)), values, color=colours)
    for row, value in enumerate(values):
        axes.annotate(
            f"{value:.2f}x",
            (value, row),
            fontsize=7,
            va="center",
            xytext=(3, 0),
            textcoords="offset points",
        )
    names = [label(f"{n}: {e['what']} vs {e['anchor']}", 60) for n, e in entries]
    axes.set_yticks(range(len(entries)), names)
    axes.tick_params(axis="y", labelsize=7)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("ratio against the anchor (above 1: squish ahead)")
    axes.invert_yaxis()
    title = "Every figure against its anchor"
    axes.set_title(f"{title}\n{when(documents)}", fontsize=10)
    save(figure, "ratios.png", title, drawn)


def link_page(drawn: list[tuple[str, str]]) -> None:
    """Rewrite the block between BEGIN and END in docs/benchmarks.md."""
    text = PAGE.read_text()
    if BEGIN not in text or END not in text:
        print(f"charts: {PAGE} has no pictures block; not linking", file=sys.stderr)
        return
    lines = [BEGIN, ""]
    for title, name in drawn:
        lines += [f"![{title}](charts/{name})", ""]
    lines += [END]
    head, rest = text.split(BEGIN, 1)
    PAGE.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


def main() -> None:
    plt.switch_backend("Agg")  # files only, no display
    found = documents()
    CHARTS.mkdir(exist_ok=True)
    for old in CHARTS.glob("*.png"):
        old.unlink()
    drawn: list[tuple[str, str]] = []
    ratios(found, drawn)
    against_anchors(found, drawn)
    for document in found:
        distributions(document, drawn)
    link_page(drawn)
    for _, name in drawn:
        print(f"charts: wrote docs/charts/{name}")


if __name__ == "__main__":
    main()
