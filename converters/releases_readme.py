"""The README's release and dataset tables, generated from :mod:`converters.releases`.

    python -m converters.releases_readme                      # print the blocks
    python -m converters.releases_readme --readme README.md   # rewrite them between the README's markers
    python -m converters.releases_readme --readme README.md --check   # exit 1 if the README is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: re-run as `python -m converters.<name>`
    import as_module
    as_module.rerun(__file__)

from converters.cli import sync_readme_command
from converters.io import splice_marked
from converters.releases import (
    CAFFE_RELEASES,
    DATA_ROOT,
    DATASETS,
    MODELS_DIR,
    TF_RELEASES,
    Archive,
    releases_in,
)

GENERATOR = "python -m converters.releases_readme --readme README.md"


def _size(a: Archive) -> str:
    return f"{a.size_text} ({a.size:,} bytes)" if a.size else a.size_text


def _checksum(a: Archive) -> str:
    if a.sha256 and a.md5:
        return f"sha256 `{a.sha256}`, md5 `{a.md5}`"
    if a.checksum:
        return f"{a.checksum[0]} `{a.checksum[1]}`"
    return "none published (the first verified download's sha256 is recorded in the lock file)"


def _preprocessing(pp) -> str:
    def fmt(values) -> str:
        return f"{values[0]:g}" if len(set(values)) == 1 else "/".join(f"{v:g}" for v in values)

    if pp.std == (1.0, 1.0, 1.0):
        return f"{pp.channel_order} minus {fmt(pp.mean)}"
    return f"{pp.channel_order}, (x - {fmt(pp.mean)}) / {fmt(pp.std)}"


def render_caffe() -> str:
    lines = ["| `--dataset` | file | unpacks to | model | classes | what it is |", "|---|---|---|---|---|---|"]
    for r in CAFFE_RELEASES.values():
        lines.append(f"| `{r.name}` | `{r.file_name}` | `{MODELS_DIR / r.folder}/` | `{r.arch}` | {r.num_classes} | "
                     f"{r.description} |")
    lines += ["", "| archive | URL | size | checksum | holds |", "|---|---|---|---|---|"]
    seen = []
    for r in CAFFE_RELEASES.values():
        if r.archive in seen:
            continue
        seen.append(r.archive)
        held = ", ".join(f"`{x.name}`" for x in releases_in(r.archive))
        lines.append(f"| `{r.archive.key}` | {r.archive.url} | {_size(r.archive)} | {_checksum(r.archive)} | {held} |")
    for pp in dict.fromkeys(r.preprocessing for r in CAFFE_RELEASES.values()):
        names = ", ".join(f"`{r.name}`" for r in CAFFE_RELEASES.values() if r.preprocessing == pp)
        lines += ["", f"Preprocessing ({names}): {_preprocessing(pp)} (0-255 scale), test crop {pp.test_crop}, "
                  f"padding {pp.pad}."]
    return "\n".join(lines) + "\n"


def render_tf() -> str:
    lines = ["| release | unpacks to | convert | loads into | preprocessing | size |", "|---|---|---|---|---|---|"]
    for r in TF_RELEASES.values():
        where = f"`{MODELS_DIR / r.folder}/{r.file_name}` ({r.checkpoint_format})"
        if r.kind == "backbone":
            into = f'`build_backbone("{r.arch}", output_stride=16)`'
        else:
            into = f'`build_model("{r.arch}", num_classes={r.num_classes})`'
        lines.append(f"| `{r.name}` | {where} | `--dataset {r.name}` | {into} | {_preprocessing(r.preprocessing)} | "
                     f"{_size(r.archive)} |")
    lines += ["", f"Each is `{next(iter(TF_RELEASES.values())).url.rsplit('/', 1)[0]}/<release>.tar.gz`; no checksum "
              "is published. By hand: download it and run the `tar` command the converter prints when the "
              "checkpoint is missing."]
    notes = [f"`{r.name}`: {r.notes}" for r in TF_RELEASES.values() if r.notes]
    if notes:
        lines += ["Inferred (not from an official listing): " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def render_datasets() -> str:
    out = [f"`python -m reproduce.download NAME... --data-root {DATA_ROOT}` fetches, verifies and unpacks these "
           "(`--dry-run` prints the plan). By hand: download each archive and unpack it as shown."]
    for d in DATASETS.values():
        out += ["", f"**{d.title}**: `{d.name}` ({d.page}); readers: "
                + ", ".join(f"`--dataset {r}`" for r in d.readers) + f", root `{DATA_ROOT / d.folder}`"]
        if d.archives:
            out += ["", "| archive | size | checksum | unpack |", "|---|---|---|---|"]
            for a in d.archives:
                out.append(f"| {a.url} | {_size(a)} | {_checksum(a)} | `{a.unpack_command(DATA_ROOT)}` |")
        else:
            out += ["", f"No direct download: {d.manual.format(data_root=DATA_ROOT)}."]
        out += ["", "```", f"{DATA_ROOT}/{d.tree}", "```"]
        if d.prepare:
            out += ["", f"Then: `{d.prepare_command(DATA_ROOT)}`" + (f" ({d.notes})" if d.notes else "")]
    return "\n".join(out) + "\n"


BLOCKS: dict[str, Callable[[], str]] = {"releases-caffe": render_caffe, "releases-tf": render_tf,
                                        "datasets": render_datasets}


def markers(block: str) -> tuple[str, str]:
    return f"<!-- {block}:start (generated by {GENERATOR}) -->", f"<!-- {block}:end -->"


def sync_readme(readme: str | Path, *, check: bool = False) -> bool:
    """Rewrite every generated block between its markers; with ``check`` only report. True if already current."""
    return splice_marked(readme, {markers(block): render() for block, render in BLOCKS.items()}, check=check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.releases_readme",
                                     description="Render the release and dataset tables of converters/releases.py.")
    parser.add_argument("--readme", type=Path, help="rewrite the generated blocks of this README instead of printing")
    parser.add_argument("--check", action="store_true", help="with --readme: exit 1 if the README is stale")
    args = parser.parse_args(argv)
    if args.readme is None:
        for block, render in BLOCKS.items():
            print(f"{markers(block)[0]}\n\n{render()}\n{markers(block)[1]}\n")
        return 0
    return sync_readme_command(args.readme, sync_readme, check=args.check,
                               stale=f"the release tables are stale; run {GENERATOR}")


if __name__ == "__main__":
    sys.exit(main())
