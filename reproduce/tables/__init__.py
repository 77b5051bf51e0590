"""Published DeepLab results as data, and a Markdown report of ours against them.

The numbers live in ``published.yaml`` (percent, typed once, each table with its source). Use::

    tables = load_tables()
    row = find_row("deeplab_v2_resnet101_voc12_val", head="aspp_l", crf=False)   # -> 76.35 mIoU
    print(render_comparison([(row, cm.compute())]))

Measured results are given as :meth:`reproduce.metrics.ConfusionMatrix.compute` returns them
(fractions in [0, 1]) unless ``measured_unit="percent"``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from converters.io import splice_marked
from reproduce.yamlfile import load_yaml

__all__ = [
    "METRICS",
    "PublishedRow",
    "PublishedTable",
    "load_tables",
    "find_row",
    "find_rows",
    "render_comparison",
]

PUBLISHED_YAML = Path(__file__).with_name("published.yaml")
METRICS: tuple[str, ...] = ("pixel_acc", "mean_acc", "miou", "fwiou")
METRIC_TITLES = {"pixel_acc": "pixel acc", "mean_acc": "mean acc", "miou": "mIoU", "fwiou": "FWIoU"}
_ROW_META = ("source", "note")


@dataclass(frozen=True)
class PublishedRow:
    """One published result: all its settings (table defaults merged in), metrics in percent, and source."""

    table: str
    index: int
    settings: Mapping[str, Any]
    own_settings: Mapping[str, Any]  # the settings this row sets itself (what tells it apart in its table)
    metrics: Mapping[str, float]
    source: str
    note: str | None = None

    @property
    def id(self) -> str:
        """Stable reference ``<table>[<index>]`` (index from 0 in file order)."""
        return f"{self.table}[{self.index}]"

    def describe(self) -> str:
        """A short label of the row's own settings, e.g. ``msc coco aug head=aspp_l crf``."""
        parts = []
        for key, value in self.own_settings.items():
            if value is True:
                parts.append(key)
            elif value is False:
                continue
            elif isinstance(value, list):
                parts.append(f"{key}={','.join(str(v) for v in value)}")
            else:
                parts.append(f"{key}={value}")
        return " ".join(parts) or "baseline"


@dataclass(frozen=True)
class PublishedTable:
    """A table from one source: shared settings and its rows."""

    name: str
    title: str
    source: str
    settings: Mapping[str, Any]
    rows: tuple[PublishedRow, ...]
    note: str | None = None


def _parse_table(name: str, spec: Mapping[str, Any], where: Path) -> PublishedTable:
    for key in ("title", "source", "rows"):
        if key not in spec:
            raise ValueError(f"{where}: table {name!r} has no {key!r}")
    common = dict(spec.get("settings") or {})
    rows = []
    seen: dict[tuple, int] = {}
    for index, raw in enumerate(spec["rows"]):
        own = {k: v for k, v in raw.items() if k not in METRICS and k not in _ROW_META}
        metrics = {k: float(raw[k]) for k in METRICS if k in raw}
        if not metrics:
            raise ValueError(f"{where}: {name}[{index}] has no metric (one of {METRICS})")
        bad = {k: v for k, v in metrics.items() if not 0.0 < v <= 100.0}
        if bad:
            raise ValueError(f"{where}: {name}[{index}] metrics must be percent in (0, 100], got {bad}")
        settings = {**common, **own}
        key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
        if key in seen:
            raise ValueError(f"{where}: {name}[{index}] has the same settings as {name}[{seen[key]}]")
        seen[key] = index
        rows.append(
            PublishedRow(
                table=name,
                index=index,
                settings=settings,
                own_settings=own,
                metrics=metrics,
                source=str(raw.get("source", spec["source"])),
                note=raw.get("note"),
            )
        )
    return PublishedTable(name, str(spec["title"]), str(spec["source"]), common, tuple(rows), spec.get("note"))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict[str, PublishedTable]:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of table name -> table")
    return {name: _parse_table(name, spec, Path(path)) for name, spec in data.items()}


def load_tables(path: str | os.PathLike | None = None) -> dict[str, PublishedTable]:
    """All published tables by name (default: the packaged ``published.yaml``); parsed once and cached."""
    return dict(_load(str(path or PUBLISHED_YAML)))


def _table(table: str | PublishedTable) -> PublishedTable:
    if isinstance(table, PublishedTable):
        return table
    tables = load_tables()
    if table not in tables:
        raise KeyError(f"unknown table {table!r}; tables: {', '.join(sorted(tables))}")
    return tables[table]


def find_rows(table: str | PublishedTable, **settings: Any) -> list[PublishedRow]:
    """Rows of ``table`` whose settings equal every given keyword (a setting the row lacks never matches)."""
    missing = object()
    return [r for r in _table(table).rows if all(r.settings.get(k, missing) == v for k, v in settings.items())]


def find_row(table: str | PublishedTable, **settings: Any) -> PublishedRow:
    """The single row of ``table`` matching ``settings``; ``LookupError`` listing candidates otherwise."""
    rows = find_rows(table, **settings)
    if len(rows) == 1:
        return rows[0]
    t = _table(table)
    asked = ", ".join(f"{k}={v!r}" for k, v in settings.items()) or "no settings"
    if not rows:
        options = "; ".join(f"[{r.index}] {r.describe()}" for r in t.rows)
        raise LookupError(f"no row of {t.name} matches {asked}; rows: {options}")
    options = "; ".join(f"[{r.index}] {r.describe()}" for r in rows)
    raise LookupError(f"{len(rows)} rows of {t.name} match {asked}, add settings to choose one: {options}")


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def render_comparison(
    entries: Iterable[tuple[PublishedRow, Mapping[str, Any] | None]],
    metrics: Sequence[str] = ("miou",),
    *,
    measured_unit: Literal["fraction", "percent"] = "fraction",
    digits: int = 2,
) -> str:
    """A Markdown table: for each (published row, our result) the published value, ours and ours - published.

    Differences are in percentage points. A missing measurement or a metric the paper did not
    report shows as "–". ``measured_unit="fraction"`` expects values in [0, 1] (as
    ``ConfusionMatrix.compute`` returns) and refuses values above 1, which would be percent.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {METRICS}")
    if measured_unit not in ("fraction", "percent"):
        raise ValueError(f"measured_unit must be 'fraction' or 'percent', got {measured_unit!r}")
    header = ["published result", "setting"]
    for m in metrics:
        t = METRIC_TITLES[m]
        header += [f"paper {t}", f"ours {t}", f"Δ {t}"]
    header.append("source")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (3 * len(metrics)) + ["---"]) + "|",
    ]
    for row, measured in entries:
        cells = [row.id, row.describe()]
        for m in metrics:
            paper = row.metrics.get(m)
            ours = None
            if measured is not None and measured.get(m) is not None:
                ours = float(measured[m])
                if measured_unit == "fraction":
                    if ours > 1.0:
                        raise ValueError(f"{row.id}: measured {m}={ours} > 1; pass measured_unit='percent'")
                    ours *= 100.0
            delta = ours - paper if ours is not None and paper is not None and not math.isnan(ours) else None
            cells += [_fmt(paper, digits), _fmt(ours, digits), _fmt(delta, digits, signed=True)]
        cells.append(row.source)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


README_START = "<!-- published-tables:start (generated by python -m reproduce.tables --readme README.md) -->"
README_END = "<!-- published-tables:end -->"


def render_published(tables: Mapping[str, PublishedTable] | None = None) -> str:
    """Every published table as Markdown: one section per table, one line per row (the README's tables)."""
    tables = load_tables() if tables is None else tables
    out: list[str] = []
    for name, table in tables.items():
        metrics = [m for m in METRICS if any(m in row.metrics for row in table.rows)]
        out.append(f"**{table.title}** (`{name}`; {table.source})\n")
        out.append("| row | setting | " + " | ".join(metrics) + " |")
        out.append("|---|---|" + "---:|" * len(metrics))
        for row in table.rows:
            values = " | ".join(_fmt(row.metrics.get(m), 2) for m in metrics)
            out.append(f"| `[{row.index}]` | {row.describe()} | {values} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def sync_readme(readme: str | os.PathLike, *, check: bool = False) -> bool:
    """Put :func:`render_published` between the README markers; with ``check``, only report staleness.

    Returns True when the README was already current.
    """
    return splice_marked(readme, {(README_START, README_END): render_published()}, check=check)
