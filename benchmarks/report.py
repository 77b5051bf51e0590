"""Render benchmark JSONs (and reproduction results) into one Markdown report with PNG plots.

Usage::

    python -m benchmarks.report results/benchmarks/*.json --out benchmarks/reports/cpu-2026-11-23
    python -m benchmarks.report results/benchmarks/*.json runs/*/result.json --out DIR

Inputs are recognised by content: suite JSONs from ``python -m benchmarks.run`` (``"suite"``),
the standalone ``python -m benchmarks.convert`` JSON, and reproduction results of
``python -m reproduce.evaluate`` (``"format": "deeplab-repro evaluation v1"``), whose published
comparison is rendered with ``reproduce.tables.render_comparison``. Writes ``DIR/README.md``
and ``DIR/*.png``. Exit status: 0 written, 1 an input could not be read, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from converters.cli import run_main
from converters.errors import DeeplabError

MIB = 1 << 20


# ---- loading -------------------------------------------------------------------------------------------------------


def classify(record: dict[str, Any]) -> str | None:
    """``inference``/``train``/``convert``/``eval``/``reproduction`` or ``None`` for an unknown JSON."""
    if record.get("suite") in ("inference", "train", "convert", "eval", "engine", "precision"):
        return record["suite"]
    if record.get("format") == _ENGINE_ROW_FORMAT:
        return "engine_row"
    if str(record.get("benchmark", "")).startswith("caffe conversion"):
        return "convert_legacy"
    if str(record.get("format", "")).startswith("deeplab-repro evaluation"):
        return "reproduction"
    return None


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for every ``*.json`` under it (sorted), e.g. a folder of engine rows."""
    out: list[Path] = []
    for path in paths:
        out += sorted(path.rglob("*.json")) if path.is_dir() else [path]
    return out


def load_inputs(paths: list[Path]) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Read every JSON and group it by kind; ``ValueError`` naming the file for unreadable or unknown ones."""
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = defaultdict(list)
    for path in expand_inputs(paths):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read JSON ({exc})") from None
        kind = classify(record) if isinstance(record, dict) else None
        if kind is None:
            raise ValueError(f"{path}: not a benchmark or reproduction result JSON")
        if kind == "convert_legacy":
            record = {"suite": "convert", "environment": record.get("environment", {}), "caffe": record,
                      "tf": {"status": "skipped", "reason": "standalone benchmarks.convert JSON (Caffe only)"}}
            kind = "convert"
        groups[kind].append((path, record))
    return groups


# ---- formatting helpers --------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _mib(nbytes: int | None) -> str:
    return "–" if nbytes is None else f"{nbytes / MIB:.0f}"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _size(s: list[int]) -> str:
    return str(s[0]) if s[0] == s[1] else f"{s[0]}x{s[1]}"


def _variant(r: dict[str, Any]) -> str:
    return f"{r['precision']} {r['memory_format']}{' compiled' if r.get('compile') else ''}"


def environment_section(groups: dict[str, list[tuple[Path, dict[str, Any]]]]) -> str:
    rows = []
    for kind in ("engine", "inference", "train", "convert", "eval", "precision"):
        for path, rec in groups.get(kind, []):
            env = rec.get("environment", {})
            git = env.get("git") or {}
            commit = (git.get("commit") or "–")[:10] + (" (dirty)" if git.get("dirty") else "")
            rows.append([kind, f"`{path.name}`", env.get("device_name") or env.get("cpu_model", "–"),
                         env.get("torch", "–"), str(env.get("cuda") or "–"),
                         str(env.get("torch_threads", "–")), str(env.get("loadavg_at_start", "–")), commit,
                         rec.get("mode", "–")])
    engine_rows = [rec for _, rec in groups.get("engine_row", [])]
    if engine_rows:
        envs = [r.get("environment") or {} for r in engine_rows]

        def each(key: str) -> str:
            return ", ".join(sorted({str(e.get(key)) for e in envs if e.get(key) is not None})) or "–"

        loads = [r["loadavg_start"][0] for r in engine_rows if r.get("loadavg_start")]
        rows.append(["engine rows", f"{len(engine_rows)} row files", each("device_name"), each("torch"), "–",
                     each("torch_threads"), f"{min(loads)}-{max(loads)} (1 min, per row)" if loads else "–",
                     ", ".join(c[:10] for c in sorted({str(e.get("commit")) for e in envs if e.get("commit")})) or "–",
                     "rows"])
    if not rows:
        return ""
    return "## Environment\n\n" + _table(
        ["suite", "file", "device", "torch", "CUDA", "threads", "load avg at start", "commit", "mode"], rows) + \
        "\nA load average above the thread count means other processes shared the cores: expect slower, " \
        "noisier numbers.\n"


# ---- engine --------------------------------------------------------------------------------------------------------

_ENGINE_ROW_FORMAT = "deeplab-repro engine row v1"


def engine_records(groups) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict], list[dict]]:
    """Merge every engine run record and row file: (variant records, rows, ceilings, runs).

    The unit is the row (one model at one size, every variant timed in the same rounds): a row measured
    more than once (re-run, or a run record beside its own row files) keeps its latest measurement whole,
    so the ratios of a row never mix runs. The ceiling of a precision is the best over every merged run
    and row, so no point's fraction of it exceeds 100 %."""
    rows: dict[tuple, dict[str, Any]] = {}
    ceilings: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []

    for path, rec in groups.get("engine", []) + groups.get("engine_row", []):
        if rec.get("format") == _ENGINE_ROW_FORMAT:
            row_list = [rec]
        else:
            runs.append({"path": path, **{k: rec.get(k) for k in ("environment", "precision_auto", "rounds",
                                                                     "loadavg_at_start", "loadavg_at_end",
                                                                     "estimate_full_table", "rows_measured")}})
            grouped: dict[tuple, list[dict]] = defaultdict(list)
            for r in rec.get("results", []):
                grouped[(r.get("peer_of") or r["model"], tuple(r["size"]))].append(r)
            checks = defaultdict(list)
            for c in rec.get("same_network", []):
                checks[(c.get("ours"), tuple(c.get("size", ())))].append(c)
            row_list = [{"model": m, "size": list(sz), "role": rs[0].get("role", "ours") if not rs[0].get("peer_of")
                         else "ours", "results": rs, "same_network": checks.get((m, sz), []),
                         "finished_utc": max(str(r.get("measured_utc", "")) for r in rs),
                         "precision_auto": rec.get("precision_auto"), "environment": rec.get("environment")}
                        for (m, sz), rs in grouped.items()]
        for p, c in (rec.get("ceilings") or {}).items():
            if p not in ceilings or c["tflops_median"] > ceilings[p]["tflops_median"]:
                ceilings[p] = {**c, "from": path.name}
        for row in row_list:
            key = (row["model"], tuple(row["size"]))
            old = rows.get(key)
            if old is None or str(row.get("finished_utc", "")) >= str(old.get("finished_utc", "")):
                rows[key] = row
    results = [dict(r) for row in rows.values() for r in row.get("results", [])]
    apply_ceilings(results, ceilings)
    return results, list(rows.values()), ceilings, runs


def apply_ceilings(results: list[dict[str, Any]], ceilings: dict[str, dict[str, Any]]) -> None:
    """Set each timed point's ``ceiling_fraction`` (in place, ``ceilings`` too): a point faster than
    its dtype's ceiling becomes the ceiling itself, so no fraction exceeds 1."""
    for r in results:
        c = ceilings.get(r.get("precision", ""))
        if r.get("status") == "ok" and r.get("achieved_tflops") and c and r["achieved_tflops"] > c["tflops_median"]:
            ceilings[r["precision"]] = {**c, "tflops_median": r["achieved_tflops"], "kernel": r["model"],
                                        "source": "model (faster than every kernel)"}
    for r in results:
        c = ceilings.get(r.get("precision", ""))
        if r.get("status") == "ok" and r.get("achieved_tflops") and c:
            r["ceiling_fraction"] = r["achieved_tflops"] / c["tflops_median"]


def _estimate_note(est: dict[str, Any] | None) -> str:
    if not est:
        return ""
    return (f"; its estimate for {est['rows']} rows: about {est['seconds'] / 60:.0f} min at the rates it measured "
            f"(load average up to {est.get('loadavg_of_measured_rows')})")


def _ms(r: dict[str, Any] | None) -> str:
    if r is None:
        return "–"
    if r.get("status") != "ok":
        if not r.get("not_native"):
            return r.get("status", "?")
        agree = r.get("argmax_agreement")
        return "not native" + (f" (untimed: {100 * agree:.2f} %)" if agree is not None else "")
    return f"{_f(r['latency']['median_s'] * 1e3)} ms"


def _cell(r: dict[str, Any] | None, base: float | None) -> str:
    text = _ms(r)
    if r is None or r.get("status") != "ok":
        return text
    bits = [f"{_f(r['latency']['median_s'] / base, 3)}x"] if base else []
    if r.get("argmax_agreement") is not None:
        bits.append(f"{100 * r['argmax_agreement']:.2f} %")
    return text + (f" ({', '.join(bits)})" if bits else "")


def engine_section(groups, out: Path | None = None, plots: list[str] | None = None) -> str:
    """The table users need: plain eager fp32 NCHW vs the engine (default, compiled, bf16 where native), every
    model and size of every merged run, then the other implementations timed beside ours."""
    results, rows, ceilings, runs = engine_records(groups)
    if not results:
        return ""
    envs = [r.get("environment") or {} for r in rows] + [r.get("environment") or {} for r in runs]
    cpus = sorted({e.get("device_name") for e in envs if e.get("device_name")})
    threads = sorted({str(e.get("torch_threads")) for e in envs if e.get("torch_threads")})
    autos: dict[str, str] = {}
    for a in [r.get("precision_auto") or {} for r in rows] + [r.get("precision_auto") or {} for r in runs]:
        if a.get("choice"):
            autos.setdefault(a["choice"], a.get("reason", "–"))
    parts = ["## Inference engine vs plain eager\n",
             f"Device: **{', '.join(cpus) or '?'}**, {', '.join(threads) or '?'} threads. Batch 1, random input and "
             "weights; the variants of one model and size (and the other implementations attached to it) are timed "
             "interleaved (round-robin, one call each per round, alternating order) and compared by their medians, "
             "so a busy neighbour slows them alike; rows measured at different moments are not comparable in "
             "absolute terms on a shared machine. Ratio = variant median / plain eager fp32 NCHW median of the "
             "same row (< 1 is faster). Agreement = share of pixels whose argmax equals eager fp32's, on the "
             "pixels whose top-2 margin exceeds 1e-4 x max |logit| (float noise cannot flip those). bf16 is timed "
             "only where `precision=\"auto\"` picks it (native and faster); elsewhere the cell says *not "
             "native* with the agreement of one untimed bf16 forward (bf16's rounding is the same on every CPU; "
             "only the fp32 summation order differs). % ceiling = achieved FLOP/s over the best of several matmul sizes and the models' conv "
             "shapes in the same dtype and thread count, the best over every merged run (never above 100 %).\n"]
    for choice, reason in sorted(autos.items()):
        parts.append(f"- precision auto chose **{choice}**" + (" (in every run)" if len(autos) == 1 else "")
                     + f", e.g. {reason}\n")
    for p, c in sorted(ceilings.items()):
        parts.append(f"- ceiling {p}: {_f(c['tflops_median'] * 1e3)} GFLOP/s ({c.get('kernel')}, "
                     f"{c.get('source', 'kernels')})\n")
    for run in runs:
        env = run.get("environment") or {}
        parts.append(f"- run `{run['path'].name}`: load average at start {run.get('loadavg_at_start') or env.get('loadavg_at_start', '–')}, "
                     f"at end {run.get('loadavg_at_end', '–')}, {run.get('rounds', '?')} rounds"
                     + _estimate_note(run.get("estimate_full_table")) + "\n")
    row_of = {(r["model"], tuple(r["size"])): r for r in rows}
    by_point: dict[tuple, dict[str, dict]] = defaultdict(dict)
    ext_by_point: dict[tuple, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    alone: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in results:
        if r.get("role") == "external":
            if r.get("peer_of"):
                ext_by_point[(r["peer_of"], tuple(r["size"]))][r["model"]][r["variant"]] = r
            else:
                alone[(r["model"], tuple(r["size"]))][r["variant"]] = r
        else:
            by_point[(r["model"], tuple(r["size"]))][r.get("variant", "?")] = r
    table = []
    for (model, size), variants in sorted(by_point.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        eager = variants.get("eager")
        base = eager["latency"]["median_s"] if eager and eager.get("status") == "ok" else None
        build = variants.get("build")
        frac = [100 * r["ceiling_fraction"] for r in variants.values() if r.get("ceiling_fraction")]
        row = row_of.get((model, size)) or {}
        load = row.get("loadavg_start")
        if build is not None:
            table.append([model, _size(list(size)), f"error: {build.get('error', '')[:80]}", "", "", "", "", ""])
            continue
        comp = variants.get("compile")
        table.append([model, _size(list(size)), _ms(eager), _cell(variants.get("engine"), base),
                      _cell(comp, base) + (f", compile {_f(comp['first_call_s'], 0)} s"
                                           if comp and comp.get("first_call_s") else ""),
                      _cell(variants.get("bf16"), base), _f(max(frac)) if frac else "–",
                      _f(load[0], 1) if load else "–"])
    parts.append("\n" + _table(["model", "size", "plain eager fp32 NCHW", "engine default", "engine + compile",
                                 "bf16 where native", "best % ceiling", "load (1 min)"], table, "lrrrrrrr"))
    errors = sorted({f"{m} {_size(list(s))} {v}: {r.get('error')}" for (m, s), vs in by_point.items()
                     for v, r in vs.items() if r.get("status") == "error"})
    if errors:
        parts.append("\nErrors: " + "; ".join(e[:300] for e in errors) + "\n")
    targets = []
    for (model, size), variants in sorted(by_point.items()):
        if "resnet101" not in model or size != (513, 513):
            continue
        for v, limit in (("engine", 0.85), ("compile", 0.75), ("bf16", 0.5)):
            r = variants.get(v)
            agreement_target = v == "bf16" and model.startswith("deeplabv3")  # the issue's: on the v3/v3+ models
            if r and r.get("untimed") and r.get("argmax_agreement") is not None:  # bf16 not native here
                a = r["argmax_agreement"]
                targets.append(f"{model} bf16 agreement {100 * a:.2f} % (untimed, not native here; "
                               + (f"target >= 99.5 %): {'met' if a >= 0.995 else 'NOT met'}" if agreement_target
                                  else "the agreement target is for the v3/v3+ models)"))
            if r and r.get("status") == "ok":
                ok = r["ratio_to_eager"] <= limit and (not agreement_target or (r.get("argmax_agreement") or 0) >= 0.995)
                targets.append(f"{model} {v} {_f(r['ratio_to_eager'], 3)}x (target <= {limit}x): "
                               f"{'met' if ok else 'NOT met'}")
    if targets:
        parts.append("\nTargets at 513 (ResNet-101 models): " + "; ".join(targets) + "\n")
    if ext_by_point:
        parts.append(_peers_table(by_point, ext_by_point, row_of))
    if alone:
        parts.append("\nOther builders timed on their own (`--external` without `=OURS`):\n\n" + _table(
            ["builder", "size", "eager fp32 NCHW", "eager fp32 channels_last"],
            [[m, _size(list(s)), _ms(v.get("external")), _ms(v.get("external_cl"))]
             for (m, s), v in sorted(alone.items())], "lrrr"))
    if out is not None and plots is not None:
        plots += _plot_engine(by_point, ext_by_point, out)
    return "\n".join(parts)


def _peers_table(by_point, ext_by_point, row_of) -> str:
    rows = []
    for (ours, size), peers in sorted(ext_by_point.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        variants = by_point.get((ours, size), {})
        checks = {s.get("external"): s for s in (row_of.get((ours, size)) or {}).get("same_network", [])}
        for spec, pv in sorted(peers.items()):
            pe, pcl = pv.get("external"), pv.get("external_cl")
            peer_best = min((r["latency"]["median_s"] for r in (pe, pcl) if r and r.get("status") == "ok"),
                            default=None)
            cells = [spec.split(":")[-1], ours, _size(list(size)), _ms(pe), _ms(pcl), _ms(variants.get("eager")),
                     _ms(variants.get("engine")), _ms(variants.get("compile"))]
            for v in ("engine", "compile"):
                r = variants.get(v)
                cells.append(_f(r["latency"]["median_s"] / peer_best, 3)
                             if r and r.get("status") == "ok" and peer_best else "–")
            chk = checks.get(spec)
            if chk is None:
                cells.append("–")
            elif chk.get("status") == "ok":
                cells.append(f"same network ({chk['mapping'].replace('converters.peers.', 'importer ')}): max rel "
                             f"diff {chk['max_rel_diff']:.1e}, argmax {100 * chk['argmax_agreement']:.2f} %")
            else:
                cells.append("different network" if chk.get("status") == "skipped" else f"error: {chk.get('error')}")
            rows.append(cells)
    return ("\n### Beside the peers' own code\n\nThe peer's own model builder (its repository's code, imported "
            "with `--external-path`), timed in our model's rows in the same rounds: what its users run (eager "
            "fp32, NCHW or channels_last) against our plain model, our engine and our engine + compile. "
            "ours / peer best = our median over the faster of the peer's two layouts (< 1: ours is faster). "
            "Same network: the peer's weights (BatchNorm statistics perturbed) loaded into ours through our "
            "importer, outputs compared on the row's input.\n\n" + _table(
                ["peer builder", "ours", "size", "peer eager NCHW", "peer eager channels_last", "ours eager",
                 "ours engine", "ours engine + compile", "engine / peer best", "compile / peer best",
                 "same weights"], rows, "lllrrrrrrrl"))


def _plot_engine(by_point, ext_by_point, out: Path) -> list[str]:
    pts = [(m, s, v) for (m, s), v in sorted(by_point.items(), key=lambda kv: (kv[0][1], kv[0][0]))
           if v.get("eager", {}).get("status") == "ok"]
    if not pts:
        return []
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(9, 0.3 * len(pts) + 1.8))
    y = range(len(pts))
    for i, (v, color) in enumerate((("engine", "tab:blue"), ("compile", "tab:green"), ("bf16", "tab:orange"))):
        vals = [p[2].get(v, {}).get("ratio_to_eager") if p[2].get(v, {}).get("status") == "ok" else None
                for p in pts]
        ax.barh([k + (i - 1) * 0.27 for k in y], [x or 0 for x in vals], height=0.27, color=color,
                label={"engine": "engine default", "compile": "engine + compile", "bf16": "bf16 (native only)"}[v])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(list(y), [f"{m} {_size(list(s))}" for m, s, _ in pts], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median latency / plain eager fp32 NCHW (< 1 is faster)")
    ax.set_title("Inference engine vs plain eager, batch 1")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    written = [_save(fig, out / "engine_ratios.png")]
    peer_rows = []
    for (ours, size), peers in sorted(ext_by_point.items()):
        for spec, pv in sorted(peers.items()):
            vals = {"peer NCHW": pv.get("external"), "peer channels_last": pv.get("external_cl"),
                    "ours eager": by_point.get((ours, size), {}).get("eager"),
                    "ours engine": by_point.get((ours, size), {}).get("engine"),
                    "ours compile": by_point.get((ours, size), {}).get("compile")}
            peer_rows.append((f"{spec.split(':')[-1]}\nvs {ours} {_size(list(size))}",
                              {k: r["latency"]["median_s"] * 1e3 for k, r in vals.items() if r and r.get("status") == "ok"}))
    if peer_rows:
        keys = ["peer NCHW", "peer channels_last", "ours eager", "ours engine", "ours compile"]
        colors = ["tab:red", "tab:pink", "tab:gray", "tab:blue", "tab:green"]
        fig, ax = plt.subplots(figsize=(9, 0.9 * len(peer_rows) + 1.8))
        h = 0.16
        for i, (k, c) in enumerate(zip(keys, colors)):
            ax.barh([j + (i - 2) * h for j in range(len(peer_rows))], [r[1].get(k, 0) for r in peer_rows],
                    height=h, color=c, label=k)
        ax.set_yticks(range(len(peer_rows)), [r[0] for r in peer_rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("median ms per forward, batch 1 (same rounds)")
        ax.set_title("Ours beside the peers' own code")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
        written.append(_save(fig, out / "engine_vs_peers.png"))
    return written


# ---- inference -----------------------------------------------------------------------------------------------------


def _inference_results(groups) -> tuple[list[dict], list[dict], dict]:
    ok, other, ceilings = [], [], {}
    several = len(groups.get("inference", [])) > 1
    for path, rec in groups.get("inference", []):
        dev = rec["environment"].get("device", "?")
        if several:  # tell runs apart in tables and plots
            dev = f"{dev}, {path.stem[:24]}"
        for r in rec["results"]:
            r = {**r, "device": dev}
            (ok if r.get("status") == "ok" else other).append(r)
        for p, c in rec.get("ceilings", {}).items():
            ceilings[(dev, p)] = c
    return ok, other, ceilings


def inference_section(groups, out: Path, plots: list[str]) -> str:
    ok, other, ceilings = _inference_results(groups)
    if not ok and not other:
        return ""
    parts = ["## Inference\n",
             "Forward pass on a random input, random weights, eval mode, `torch.inference_mode`; median and IQR "
             "over the timed calls; peak memory is the whole-process peak RSS on CPU (`VmHWM`), "
             "`max_memory_allocated` on CUDA. % ceiling = achieved FLOP/s (FlopCounterMode FLOPs / median) over "
             "a square matmul in the same dtype timed in the same run.\n"]
    if ceilings:
        parts.append(_table(["device", "precision", "matmul n", "GFLOP/s (median)", "GFLOP/s (best)"],
                            [[d, p, str(c["n"]), _f(c["tflops_median"] * 1e3), _f(c["tflops_best"] * 1e3)]
                             for (d, p), c in sorted(ceilings.items())], "llrrr"))
    rows = []
    for r in sorted(ok, key=lambda r: (r["role"], r["model"], r["size"], r["batch"], _variant(r))):
        lat = r["latency"]
        rows.append([r["model"] + (" (peer)" if r["role"] == "peer" else ""), r["device"], _size(r["size"]),
                     str(r["batch"]), r["precision"], r["memory_format"], "on" if r["compile"] else "off",
                     _f(lat["median_s"] * 1e3), _f(lat["iqr_s"] * 1e3), _f(r["images_per_s"], 2),
                     _f(r.get("gflops")), _f(r.get("achieved_tflops", 0) * 1e3) if r.get("achieved_tflops") else "–",
                     _f(100 * r["ceiling_fraction"]) if r.get("ceiling_fraction") is not None else "–",
                     _mib(r["memory"].get("peak_bytes"))])
    parts.append("\n" + _table(["model", "device", "size", "batch", "precision", "memory format", "compile",
                                "median ms", "IQR ms", "images/s", "GFLOPs", "GFLOP/s", "% ceiling",
                                "peak MiB"], rows, "llrrlllrrrrrrr"))
    over = [r for r in ok if (r.get("ceiling_fraction") or 0) > 1.0]
    if over:
        parts.append(f"\n**Warning:** {len(over)} point(s) exceed 100 % of the measured ceiling: the matmul ran "
                     "slower than the model's convolutions, so the ceiling is an underestimate (measured while "
                     "other processes used the cores, or `torch.mm` is not this device's fastest kernel in that "
                     "dtype). Treat the % ceiling column of such a run as invalid.\n")
    loads = [max(rec["environment"].get("loadavg_at_start") or [0])
             for _, rec in groups.get("inference", [])]
    threads = [rec["environment"].get("torch_threads") or 1 for _, rec in groups.get("inference", [])]
    if any(load > t for load, t in zip(loads, threads)):
        parts.append("\n**Warning:** the load average exceeded the thread count when this run started: other "
                     "processes competed for the cores, and points measured at different moments are not "
                     "comparable (large IQRs and non-monotonic latencies are the symptom).\n")
    parts.append(_speedups(ok))
    if other:
        reasons: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in other:
            what = r.get("reason") or r.get("error") or "?"
            reasons[(r.get("status", "?"), what)].append(
                " ".join(str(x) for x in (r.get("model"), r.get("precision"), r.get("memory_format"),
                                          "compile" if r.get("compile") else "") if x))
        parts.append("\nNot measured:\n\n" + _table(
            ["status", "reason", "points"],
            [[s, w, f"{len(v)} ({'; '.join(sorted(set(v))[:4])}{' …' if len(set(v)) > 4 else ''})"]
             for (s, w), v in sorted(reasons.items())]))
    ratios = [x for _, rec in groups.get("inference", []) for x in rec.get("peer_ratios", [])]
    if ratios:
        parts.append("\nPeers (latency peer / ours; > 1 means ours is faster):\n\n" + _table(
            ["peer", "ours", "size", "batch", "variant", "latency ratio", "peak memory ratio", "FLOPs ratio"],
            [[x["peer"], x["ours"], _size(x["size"]), str(x["batch"]), _variant(x),
              _f(x["latency_peer_over_ours"], 2), _f(x["peak_memory_peer_over_ours"], 2),
              _f(x["flops_peer_over_ours"], 2)] for x in ratios], "lllrlrrr"))
    plots += _plot_inference(ok, out)
    return "\n".join(parts)


def _speedups(ok: list[dict]) -> str:
    """bf16-over-fp32 and channels_last-over-contiguous speed ratios at equal other settings."""
    index = {(r["device"], r["model"], tuple(r["size"]), r["batch"], r["precision"], r["memory_format"],
              r["compile"]): r["latency"]["median_s"] for r in ok}
    rows = []
    for (dev, model, size, batch, prec, fmt, comp), t in sorted(index.items()):
        if prec != "fp32" or fmt != "contiguous":
            continue
        bf16 = index.get((dev, model, size, batch, "bf16", fmt, comp))
        cl = index.get((dev, model, size, batch, prec, "channels_last", comp))
        best = min(v for k, v in index.items() if k[:4] == (dev, model, size, batch) and k[6] == comp)
        rows.append([model, dev, _size(list(size)), str(batch), "on" if comp else "off",
                     _f(t / bf16, 2) if bf16 else "–", _f(t / cl, 2) if cl else "–", _f(t / best, 2)])
    if not rows:
        return ""
    return "\nSpeed-ups over fp32 contiguous (ratio of medians; > 1 is faster):\n\n" + _table(
        ["model", "device", "size", "batch", "compile", "bf16", "channels_last", "best variant"], rows, "lllrlrrr")


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported when a plot is drawn: reports need no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    """Lay out, write (110 dpi) and close ``fig``; return the file name (for the report's list of plots)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _plot_inference(ok: list[dict], out: Path) -> list[str]:
    plt = _pyplot()

    written = []
    models = sorted({(r["model"], r["device"]) for r in ok})
    # latency vs input size, one panel per model
    cols = min(3, len(models))
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (model, dev) in zip(axes.flat, models):
        series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for r in ok:
            if r["model"] == model and r["device"] == dev and r["batch"] == min(x["batch"] for x in ok):
                mp = r["size"][0] * r["size"][1] / 1e6
                lat = r["latency"]
                series[_variant(r)].append((mp, lat["median_s"] * 1e3, lat["iqr_s"] * 1e3))
        for name, pts in sorted(series.items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] / 2 for p in pts], marker="o",
                        capsize=3, label=name)
        ticks = sorted({(r["size"][0] * r["size"][1] / 1e6, _size(r["size"])) for r in ok if r["model"] == model})
        ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=8)
        ax.set_title(f"{model} ({dev})", fontsize=9)
        ax.set_xlabel(f"input size (x axis linear in pixels; batch {min(x['batch'] for x in ok)})")
        ax.set_ylabel("median latency, ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle("Inference latency vs input size (error bar: IQR)")
    written.append(_save(fig, out / "inference_latency_vs_size.png"))

    # throughput vs batch, when more than one batch size was measured
    if len({r["batch"] for r in ok}) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series2: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in ok:
            series2[f"{r['model']} {_size(r['size'])} {_variant(r)}"].append((r["batch"], r["images_per_s"]))
        for name, pts in sorted(series2.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xlabel("batch")
        ax.set_ylabel("images/s")
        ax.set_title("Inference throughput vs batch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        written.append(_save(fig, out / "inference_throughput_vs_batch.png"))

    # fraction of the ceiling
    pts = [r for r in ok if r.get("ceiling_fraction") is not None]
    if pts:
        pts.sort(key=lambda r: (r["model"], r["size"], r["batch"], _variant(r)))
        fig, ax = plt.subplots(figsize=(8, 0.28 * len(pts) + 1.5))
        labels = [f"{r['model']} {_size(r['size'])} b{r['batch']} {_variant(r)}" for r in pts]
        colors = ["tab:orange" if r["precision"] != "fp32" else "tab:blue" for r in pts]
        ax.barh(range(len(pts)), [100 * r["ceiling_fraction"] for r in pts], color=colors)
        ax.axvline(100, color="black", linestyle="--", linewidth=1)  # above it the ceiling was underestimated
        ax.set_yticks(range(len(pts)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("% of the same-dtype matmul ceiling (blue fp32, orange bf16/fp16)")
        ax.set_title("Achieved fraction of the measured ceiling")
        ax.grid(axis="x", alpha=0.3)
        written.append(_save(fig, out / "inference_ceiling_fraction.png"))
    return written


# ---- train ---------------------------------------------------------------------------------------------------------


def train_section(groups, out: Path, plots: list[str]) -> str:
    recs = groups.get("train", [])
    if not recs:
        return ""
    parts = ["## Training step\n"]
    rows, ok = [], []
    for _, rec in recs:
        parts.append(f"- step: {rec.get('step_source', '–')}\n- optimizer: {rec.get('optimizer', '–')}\n")
        for r in rec["results"]:
            if r.get("status") == "ok":
                ok.append(r)
                rows.append([r["config"], r["model"], str(r["crop"]), str(r["batch"]), "on" if r["amp"] else "off",
                             r["memory_format"], _f(r["latency"]["median_s"] * 1e3), _f(r["latency"]["iqr_s"] * 1e3),
                             _f(r["images_per_s"], 2), _mib(r["memory"].get("peak_bytes")), r.get("loss_source", "–")])
            else:
                rows.append([r.get("config", "–"), r.get("model", "–"), str(r.get("crop", "–")),
                             str(r.get("batch", "–")), str(r.get("amp", "–")), r.get("memory_format", "–"),
                             r.get("status", "?"), "", "", "", r.get("reason") or r.get("error", "")])
    parts.append(_table(["config", "model", "crop", "batch", "AMP", "memory format", "median ms/step", "IQR ms",
                         "images/s", "peak MiB", "loss"], rows, "llrrllrrrrl"))
    if ok:
        plt = _pyplot()

        fig, ax = plt.subplots(figsize=(8, 0.35 * len(ok) + 1.5))
        ax.barh(range(len(ok)), [r["images_per_s"] for r in ok],
                color=["tab:orange" if r["amp"] else "tab:blue" for r in ok])
        ax.set_yticks(range(len(ok)), [f"{r['config']} b{r['batch']} {'AMP ' if r['amp'] else ''}{r['memory_format']}"
                                       for r in ok], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("images/s (forward + loss + backward + SGD step)")
        ax.set_title("Training step throughput (orange: AMP)")
        ax.grid(axis="x", alpha=0.3)
        plots.append(_save(fig, out / "train_throughput.png"))
    return "\n".join(parts)


# ---- convert -------------------------------------------------------------------------------------------------------


def convert_section(groups, out: Path, plots: list[str]) -> str:
    recs = groups.get("convert", [])
    if not recs:
        return ""
    parts = ["## Conversion\n", "Each path in its own process: wall seconds of the whole process (interpreter "
             "and imports included) and its own peak RSS (`ru_maxrss` via `os.wait4`). `baseline` is "
             "`import torch` alone.\n"]
    bars: list[tuple[str, str, float, float]] = []
    for _, rec in recs:
        for fmt in ("caffe", "tf"):
            part = rec.get(fmt) or {}
            if part.get("status") == "skipped":
                parts.append(f"- {fmt}: skipped — {part.get('reason')}\n")
                continue
            if "results" not in part:
                continue
            f = part["file"]
            name = f.get("synth_arch") or f.get("release")
            parts.append(f"**{fmt}**: `{name}`, {f['size_mib']} MiB ({rec.get('mode', part.get('mode', '–'))})\n")
            rows = []
            for run, r in part["results"].items():
                rows.append([run, _f(r["seconds"], 2), _f(r["peak_rss_mib"]), _f(r["rss_over_file_size"], 2)])
                bars.append((fmt, run, r["seconds"], r["peak_rss_mib"]))
            parts.append(_table(["path", "seconds", "peak RSS MiB", "RSS / file size"], rows, "lrrr"))
            ratio = part.get("naive_over_ours")
            if ratio:
                parts.append(f"\nnaive / ours: {ratio['seconds']}x time, {ratio['peak_rss']}x peak RSS\n")
            crc = part.get("crc_cost")
            if crc:
                parts.append(f"\nCRC-32C check of every tensor ({crc['implementation']}, on by default): "
                             f"{crc['crc_seconds']} s over {crc['bytes'] / (1 << 20):.0f} MiB = "
                             f"{crc['crc_over_ours']:.1%} of `ours` (bound {crc['limit']:.0%}: "
                             f"{'met' if crc['met'] else 'NOT met'})"
                             + (f"; reading every tensor in one process: {crc['read_all_checked_seconds']} s checked, "
                                f"{crc['read_all_unchecked_seconds']} s unchecked"
                                if "read_all_checked_seconds" in crc else "")
                             + f"; whole processes `ours` - `ours_no_verify` = {crc['difference_over_ours']:+.1%} "
                             "(run-to-run noise included)\n")
            req = part.get("requirement")
            if req:
                parts.append(f"\nrequirement peak RSS < {req['limit_ratio']}x file size: "
                             f"{'met' if req['met'] else 'NOT met'} ({req['ours_rss_over_file_size']}x"
                             f"{'' if req['applies'] else ', stated for the full 3-scale file'})\n")
    if bars:
        plt = _pyplot()

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.4 * len(bars) + 1.8))
        labels = [f"{fmt}: {run}" for fmt, run, _, _ in bars]
        colors = ["tab:green" if run == "ours" else "tab:red" if run == "naive" else "tab:gray"
                  for _, run, _, _ in bars]
        a1.barh(range(len(bars)), [b[2] for b in bars], color=colors)
        a2.barh(range(len(bars)), [b[3] for b in bars], color=colors)
        for ax, label in ((a1, "wall seconds (whole process)"), (a2, "peak RSS, MiB")):
            ax.set_yticks(range(len(bars)), labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle("Conversion: ours (green) vs naive reference (red), import-torch baseline (gray)")
        plots.append(_save(fig, out / "convert_time_memory.png"))
    return "\n".join(parts)


# ---- eval ----------------------------------------------------------------------------------------------------------


def eval_section(groups, out: Path, plots: list[str]) -> str:
    recs = groups.get("eval", [])
    if not recs:
        return ""
    parts = ["## Evaluation\n", "Confusion-matrix accumulation (megapixels/s of `update`, data already on the "
             "device):\n"]
    rows, crf = [], []
    for _, rec in recs:
        for r in rec["confusion_matrix"]:
            if r.get("status") == "ok":
                extra = "" if "equals_ours" not in r else f" (matrix equal to ours: {r['equals_ours']})"
                rows.append([r["implementation"] + extra, r["device"], f"{r['batch']}x{r['size']}²",
                             _f(r["latency"]["median_s"] * 1e3, 2), _f(r["megapixels_per_s"])])
            else:
                rows.append([r.get("implementation", "–"), r.get("device", "–"), "", r.get("status", "?"),
                             r.get("reason") or r.get("error", "")])
        crf += rec.get("crf", [])
    parts.append(_table(["implementation", "device", "batch", "median ms", "Mpixel/s"], rows, "lllrr"))
    ok = [c for c in crf if c.get("status") == "ok"]
    if ok:
        parts.append("\nDense CRF (`reproduce.crf.CRFPool`, DeepLab v2 ResNet-101 settings; workers 0 = in "
                     "process; pool start-up excluded from the rate):\n")
        parts.append(_table(["workers", "images", "size", "seconds", "images/s", "start-up s", "same labels"],
                            [[str(c["workers"]), str(c["images"]), str(c["size"]), _f(c["seconds"], 2),
                              _f(c["images_per_s"], 2), _f(c["startup_seconds"], 2), str(c["same_labels_as_first"])]
                             for c in ok], "rrrrrrl"))
        plt = _pyplot()

        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.plot([c["workers"] for c in ok], [c["images_per_s"] for c in ok], marker="o")
        ax.set_xticks([c["workers"] for c in ok])
        ax.set_xlabel("worker processes (0 = in process)")
        ax.set_ylabel("images/s")
        ax.set_title(f"Dense CRF scaling ({ok[0]['size']}x{ok[0]['size']}, {ok[0]['num_classes']} classes)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        plots.append(_save(fig, out / "crf_scaling.png"))
    for c in crf:
        if c.get("status") != "ok":
            why = " ".join(str(c.get("reason") or c.get("error")).split())[:300]
            parts.append(f"\n- dense CRF, {c.get('workers', '?')} workers, {c.get('status')}: {why}\n")
    if len(ok) > 1:
        one = next((c for c in ok if c["workers"] == 1), None)
        if one:
            parts.append("\nCRF scaling (rate with N workers / (N x the 1-worker rate)): " + ", ".join(
                f"{c['workers']} workers {_f(c['images_per_s'] / (c['workers'] * one['images_per_s']), 2)}"
                for c in ok if c["workers"] > 1) + "\n")
    for _, rec in recs:
        p = rec.get("pipeline")
        if not p:
            continue
        if p.get("status") != "ok":
            parts.append(f"\n- evaluation pipeline {p.get('status')}: {p.get('reason') or p.get('error')}\n")
            continue
        modes = list(p.get("decode_modes") or {})
        decoding = f"decoding {modes[0]}" if modes else "decoding"
        if modes and modes[0] == "default" and p.get("default_decode"):
            decoding += f" ({p['default_decode']})"
        parts.append(f"\nEvaluation pipeline ({p['model']}, {p['protocol']} {p['size']}, {p['images']} generated "
                     f"VOC-sized JPEGs, {decoding}, median of {p['rounds']} "
                     f"interleaved rounds): forward only {_f(p['forward_images_per_s'], 3)} images/s, whole "
                     f"evaluation (decode + forward + metrics) {_f(p['eval_images_per_s'], 3)} images/s = "
                     f"**{_f(100 * p['eval_over_forward'])} %** of the forward-only rate.\n")
    return "\n".join(parts)


# ---- reproduction --------------------------------------------------------------------------------------------------

_ROW_ID = re.compile(r"^(?P<table>[\w.-]+)\[(?P<index>\d+)\]$")


def precision_section(groups) -> str:
    """The ``precision`` suite: bf16 and fp16 against fp32 in mIoU and argmax agreement, per model and protocol."""
    recs = groups.get("precision", [])
    if not recs:
        return ""
    from benchmarks.precision import table

    parts = ["## The cost of bf16 and fp16 in mIoU\n",
             "Models trained here on generated shapes, evaluated on held-out scenes by the evaluation code at each "
             "precision (fp32: IEEE, TF32 off; bf16/fp16: autocast). Δ = mIoU − fp32's mIoU in percentage points; "
             "agreement = share of pixels whose label equals fp32's (labelled pixels; all pixels).\n"]
    for path, rec in recs:
        for m in rec.get("models", []):
            t, plan = m.get("training") or {}, m.get("plan") or {}
            parts.append(f"- `{path.name}` **{m['model']}** ({t.get('model')}): {t.get('init')} init, trained "
                         f"{t.get('iterations')} iterations of {t.get('batch')} at {t.get('crop')} px"
                         + (f" in {t['seconds']:.0f} s" if t.get("seconds") else " (a finished run, reused)")
                         + f"; held-out scenes of {plan.get('eval_size')} px, pad protocol crop "
                         f"{plan.get('pad_crop')}, scales {plan.get('scales')}")
        parts.append("\n" + table(rec))
    return "\n".join(parts)


def reproduction_precision(run: dict[str, Any]) -> tuple[str, bool]:
    """``(precision, reference)`` of a ``result.json`` run: ``run.precision`` (recorded since evaluations run fp32 by
    default), else the engine's (older results ran ``auto``: bf16 on AMX CPUs and most GPUs)."""
    rec = run.get("precision")
    if isinstance(rec, dict) and rec.get("name"):
        return str(rec["name"]), bool(rec.get("reference"))
    name = (run.get("engine") or {}).get("precision")
    return (str(name), False) if name else ("not recorded", False)


def reproduction_section(groups) -> str:
    recs = groups.get("reproduction", [])
    if not recs:
        return ""
    from reproduce.evaluate import MarkedRow
    from reproduce.tables import METRICS, load_tables, render_comparison

    tables = load_tables()
    parts = ["## Reproduction: our mIoU beside the published numbers\n"]
    for path, rec in recs:
        run = rec.get("run", {})
        model = (run.get("model") or {}).get("name", "?")
        dataset = run.get("dataset") or {}
        precision, reference = reproduction_precision(run)
        parts.append(f"**{model}** on {dataset.get('name', '?')} {dataset.get('split', '')} "
                     f"(`{path.name}`: {run.get('images', '?')} images, protocol {run.get('protocol', '?')}, "
                     f"scales {run.get('scales', '?')}, flip {run.get('flip', '?')}, precision "
                     + (f"{precision})\n" if reference else f"**{precision}**: not the reference's fp32)\n"))
        entries = []
        for c in rec.get("comparison", []):
            m = _ROW_ID.match(str(c.get("row", "")))
            table = tables.get(m["table"]) if m else None
            if table is None or int(m["index"]) >= len(table.rows):
                continue
            measured = (rec.get("results") or {}).get(c.get("compared_with", "plain"))
            row = table.rows[int(m["index"])]
            entries.append((row if reference else MarkedRow(row, precision), measured))
        if entries:
            metrics = [k for k in METRICS if any(k in row.metrics for row, _ in entries)] or ["miou"]
            parts.append(render_comparison(entries, metrics))
        else:
            results = rec.get("results") or {}
            parts.append(_table(["variant", "mIoU %"], [[k, _f(100 * v["miou"], 2)] for k, v in results.items()
                                                        if v], "lr") + "\n(no published row to compare with)\n")
    return "\n".join(parts)


# ---- main ----------------------------------------------------------------------------------------------------------


def render(paths: list[Path], out: Path, title: str | None = None) -> Path:
    """Write ``out/README.md`` and the PNGs from ``paths``; return the Markdown path."""
    from converters.io import write_text_atomic

    groups = load_inputs(paths)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    sections = [environment_section(groups), engine_section(groups, out, plots), inference_section(groups, out, plots),
                train_section(groups, out, plots), convert_section(groups, out, plots),
                eval_section(groups, out, plots), precision_section(groups), reproduction_section(groups)]
    files = expand_inputs(paths)
    named = ", ".join(f"`{p.name}`" for p in files[:12]) + (f" and {len(files) - 12} more" if len(files) > 12 else "")
    text = f"# {title or 'Benchmark report'}\n\nGenerated by `python -m benchmarks.report` from {named}.\n\n" + \
        "\n".join(s for s in sections if s)
    if plots:
        text += "\n## Plots\n\n" + "\n\n".join(f"![{p}]({p})" for p in plots) + "\n"
    md = out / "README.md"
    write_text_atomic(md, text)
    return md


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description="Render benchmark and reproduction result JSONs as a Markdown report with plots.")
    p.add_argument("results", nargs="+", type=Path, help="suite JSONs and/or reproduction result.json files")
    p.add_argument("--out", type=Path, required=True, help="output directory (README.md + PNGs)")
    p.add_argument("--title", help="report title (default: 'Benchmark report')")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


def run(args: argparse.Namespace) -> None:
    try:
        md = render(args.results, args.out, args.title)
    except ValueError as exc:
        raise DeeplabError(str(exc)) from None
    print(f"wrote {md}")


if __name__ == "__main__":
    sys.exit(main())
