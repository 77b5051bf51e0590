"""``deeplab-download``: fetch official releases and datasets by name, verify them, unpack them in place.

Everything it knows (URLs, sizes, checksums, where each archive unpacks) comes from the one
registry, :mod:`converters.releases`. For each archive it

1. does nothing when the files it provides are already in place (a second run only checks);
2. downloads into ``<root>/downloads/<archive>/`` through a ``.part`` file, resuming an
   interrupted transfer with an HTTP ``Range`` request (retried a few times within one run;
   a later run resumes the same ``.part``);
3. verifies the byte size and the published sha256 (or md5 where only that is published)
   BEFORE anything is unpacked (against the published value, or against the sha256 recorded in a
   user-level lock file, ``$DEEPLAB_DOWNLOAD_LOCK``, default ``~/.config/deeplab-repro/downloads.lock.json``);
4. unpacks it with :func:`reproduce.unpack.unpack_archive`: checked member by member, bounded in size,
   staged, and moved into the folder the converters or dataset readers read only once complete;
5. then, where no checksum is published, records the sha256 of this first complete, checked download in
   the lock file (later downloads are checked against it), and last writes the completion marker
   (``downloads/<archive>/unpacked.json``) that a later run's "already in place" rests on.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from converters.cli import run_main
from converters.errors import DeeplabError
from converters.releases import (
    ARCHIVES,
    DATA_ROOT,
    DATASETS,
    MODELS_DIR,
    RELEASES,
    Archive,
    Dataset,
)
from reproduce.unpack import MAX_RATIO, MIN_LIMIT, UnpackError, human, present, size_limit, unpack_archive

CHUNK = 1 << 20
LOCK_ENV = "DEEPLAB_DOWNLOAD_LOCK"
USER_AGENT = "deeplab-repro-download/1"


class DownloadError(DeeplabError):
    """A failed download, verification or unpacking: a one-line, user-facing message."""


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Item:
    """One archive to fetch for the requested names."""

    archive: Archive
    root: Path  # the models folder or the data root
    url: str
    names: tuple[str, ...]  # the requested names it serves

    @property
    def download_path(self) -> Path:
        return self.root / "downloads" / self.archive.key / self.archive.file_name

    @property
    def marker(self) -> Path:
        return self.root / "downloads" / self.archive.key / "unpacked.json"

    @property
    def destination(self) -> Path:
        return self.archive.destination(self.root)


def known_names() -> list[str]:
    return [*RELEASES, *DATASETS, *(k for k in ARCHIVES if k not in RELEASES and k not in DATASETS)]


def mirror_url(url: str, mirror: str | None) -> str:
    """``url`` on ``mirror``: the mirror keeps the original path (``MIRROR/<path of the URL>``)."""
    if not mirror:
        return url
    return mirror.rstrip("/") + urllib.parse.urlsplit(url).path


def resolve(names: Iterable[str], models_dir: Path, data_root: Path,
            mirror: str | None) -> tuple[list[Item], list[Dataset]]:
    """The archives (deduplicated, in order) and the manual datasets that ``names`` need."""
    items: dict[str, Item] = {}
    manual: list[Dataset] = []

    def add(archive: Archive, name: str) -> None:
        if archive.key in items:
            old = items[archive.key]
            if name not in old.names:
                items[archive.key] = Item(old.archive, old.root, old.url, (*old.names, name))
            return
        root = models_dir if archive.root == "models" else data_root
        items[archive.key] = Item(archive, root, mirror_url(archive.url, mirror), (name,))

    for name in names:
        if name in RELEASES:
            add(RELEASES[name].archive, name)
        elif name in DATASETS:
            dataset = DATASETS[name]
            if not dataset.archives:
                manual.append(dataset)
            for archive in dataset.archives:
                add(archive, name)
        elif name in ARCHIVES:
            add(ARCHIVES[name], name)
        else:
            raise KeyError(name)
    return list(items.values()), manual


def describe(item: Item, lock: dict) -> list[str]:
    """The dry-run plan lines of one archive."""
    a = item.archive
    size = f"{a.size:,} bytes ({a.size_text})" if a.size else f"{a.size_text} (exact size not published)"
    if a.checksum:
        algo, value = a.checksum
        check = f"{algo} {value}" + (f" (from {a.checksum_source})" if a.checksum_source else "")
    elif a.key in lock:
        check = f"none published; sha256 {lock[a.key]['sha256']} recorded in {lock_path()} on first download"
    else:
        check = f"none published; the first verified download's sha256 will be recorded in {lock_path()}"
    lines = [
        f"{', '.join(item.names)}: {a.file_name}",
        f"  url:         {item.url}",
        f"  size:        {size}",
        f"  checksum:    {check}",
        f"  download to: {item.download_path}",
        f"  unpack into: {item.destination}/ ({a.format}; unpacks to at most "
        f"{human(size_limit(a.size)) if a.size else f'{MAX_RATIO} x its size (at least {human(MIN_LIMIT)})'}, "
        "checked before writing)",
        f"  provides:    {', '.join(str(item.root / p) for p in a.expect)}",
    ]
    lines += [f"  then:        {step}" for step in next_steps(item)]
    return lines


def next_steps(item: Item) -> list[str]:
    steps = []
    for name in item.names:
        if name in RELEASES:
            steps.append(RELEASES[name].convert_command(item.root))
        elif name in DATASETS and DATASETS[name].prepare:
            steps.append(DATASETS[name].prepare_command(item.root))
    return steps


# ----------------------------------------------------------------------------- lock file
def lock_path() -> Path:
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "deeplab-repro" / "downloads.lock.json"


def read_lock() -> dict:
    """The lock file's records (archive key -> {"sha256": ..., ...}); a damaged file is one line naming it."""
    path = lock_path()
    if not os.path.lexists(path):
        return {}
    try:
        if path.stat().st_size > 16 << 20:
            raise ValueError("larger than 16 MB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
        raise DownloadError(f"{path}: unreadable lock file ({reason}); fix or remove it") from None
    if not isinstance(data, dict):
        raise DownloadError(f"{path}: not a JSON object; fix or remove it")
    for key, record in data.items():
        if not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", record["sha256"])):
            raise DownloadError(f"{path}: the entry for '{key}' has no 64-digit hexadecimal sha256; fix or remove it")
    return data


def record_lock(archive: Archive, url: str, sha256: str, size: int) -> Path:
    from converters.io import write_json_atomic

    data = read_lock()
    data[archive.key] = {"file": archive.file_name, "url": url, "sha256": sha256, "size": size,
                         "first_verified_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        return write_json_atomic(lock_path(), dict(sorted(data.items())))
    except OSError as exc:
        raise DownloadError(f"{lock_path()}: cannot write the lock file ({exc.strerror or exc}); the files are "
                            "unpacked but not marked complete (rerun)") from None


# ----------------------------------------------------------------------------- transfer
def _progress(total: int | None, initial: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=quiet, file=sys.stderr, leave=False)


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None)."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, total = value[6:].split("/", 1)
        return int(span.split("-", 1)[0]), (None if total.strip() == "*" else int(total))
    except ValueError:
        return None


def fetch(item: Item, *, retries: int, timeout: float, quiet: bool, say) -> Path:
    """Download ``item`` to its download path (resuming its ``.part``); return the path."""
    target = item.download_path
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    expected = item.archive.size
    attempt = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        if expected is not None and start > expected:
            say(f"   {part} is larger than the archive ({start:,} > {expected:,} bytes): starting again")
            part.unlink()
            start = 0
        if expected is not None:
            free = shutil.disk_usage(target.parent).free
            if free < expected - start:
                raise DownloadError(f"{target.parent}: {human(free)} free, {item.archive.file_name} needs "
                                    f"{human(expected - start)} more")
        headers = {"User-Agent": USER_AGENT}
        if start:
            headers["Range"] = f"bytes={start}-"
            say(f"   resuming {part.name} at byte {start:,}")
        request = urllib.request.Request(item.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only, checked)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start:
                if expected is not None and start == expected:
                    break  # the .part is already complete
                say(f"   the server refused to resume at byte {start:,}: starting again")
                part.unlink()
                continue
            raise DownloadError(f"{item.url}: HTTP {exc.code} {exc.reason}{_by_hand(item)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"cannot reach {urllib.parse.urlsplit(item.url).netloc} ({reason}); "
                                f"{_by_hand(item, lead='')}") from None
        with response:
            total = None
            if response.status == 206:
                rng = _content_range(response.headers.get("Content-Range"))
                if rng is None or rng[0] != start:
                    say("   the server answered the resume request with a different range: starting again")
                    part.unlink()
                    continue
                total = rng[1]
            else:
                if start:
                    say(f"   the server ignored the resume request (HTTP {response.status}): starting again from 0")
                start = 0
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if expected is not None and total is not None and total != expected:
                raise DownloadError(f"{item.url}: the server offers {total:,} bytes, {item.archive.file_name} is "
                                    f"{expected:,} bytes (a different file; wrong URL or mirror?)")
            total = total if total is not None else expected
            try:
                with open(part, "ab" if start else "wb") as fh, \
                        _progress(total, start, item.archive.file_name, quiet) as bar:
                    while block := response.read(CHUNK):
                        fh.write(block)
                        bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError):
                pass  # judged by the size below
        got = part.stat().st_size if part.exists() else 0
        if total is None or got == total:
            break
        attempt += 1
        if got > total:
            part.unlink()
            raise DownloadError(f"{item.url}: received {got:,} bytes, more than the announced {total:,}; "
                                "removed the partial file, rerun to start again")
        if attempt > retries:
            raise DownloadError(f"{item.url}: transfer interrupted at {got:,} of {total:,} bytes; the partial file "
                                f"{part} is kept: rerun the same command to resume")
        say(f"   transfer interrupted at {got:,} of {total:,} bytes; resuming ({attempt}/{retries})")
        time.sleep(min(2.0 ** (attempt - 1), 10.0) * 0.1)
    os.replace(part, target)
    return target


def _by_hand(item: Item, lead: str = "; ") -> str:
    return (f"{lead}download {item.archive.url} by hand and put it at {item.download_path} (then rerun to verify "
            f"and unpack it), or pass --mirror URL")


# ----------------------------------------------------------------------------- verification
def hashes(path: Path, quiet: bool) -> tuple[str, str]:
    """(sha256, md5) of ``path`` in one pass, with a progress bar."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as fh, _progress(path.stat().st_size, 0, f"checking {path.name}", quiet) as bar:
        while block := fh.read(4 * CHUNK):
            sha.update(block)
            md5.update(block)
            bar.update(len(block))
    return sha.hexdigest(), md5.hexdigest()


def verify(item: Item, path: Path, lock: dict, quiet: bool, say) -> tuple[str, bool]:
    """Check size and checksum of the downloaded file. Returns (sha256, needs_lock_record).

    On a mismatch the file is removed (it is complete and wrong: resuming cannot fix it).
    """
    a = item.archive
    size = path.stat().st_size
    if a.size is not None and size != a.size:
        path.unlink()
        raise DownloadError(f"{path}: {size:,} bytes, {a.file_name} is {a.size:,} bytes; removed it, nothing "
                            "unpacked (rerun to download again)")
    sha256, md5 = hashes(path, quiet)
    if a.checksum:
        algo, want = a.checksum
        got = sha256 if algo == "sha256" else md5
        if got != want:
            path.unlink()
            raise DownloadError(f"{path}: {algo} {got} does not match the published {want}; removed it, nothing "
                                "unpacked (a corrupted or different file: rerun to download again, or try --mirror)")
        say(f"   {algo} verified: {want}")
        return sha256, False
    if a.key in lock:
        want = lock[a.key]["sha256"]
        if sha256 != want:
            path.unlink()
            raise DownloadError(f"{path}: sha256 {sha256} differs from the {want} recorded in {lock_path()} at the "
                                f"first download ({lock[a.key].get('first_verified_utc', '?')}); removed it, nothing "
                                "unpacked (if the publisher changed the file, delete that entry from the lock file)")
        say(f"   sha256 matches the one recorded in {lock_path()}: {sha256}")
        return sha256, False
    return sha256, True


# ----------------------------------------------------------------------------- one archive
def completed(item: Item) -> bool:
    """An earlier run unpacked this archive completely: its marker (written last) names it."""
    try:
        record = json.loads(item.marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(record, dict) and record.get("archive") == item.archive.key


def expected_in_destination(item: Item) -> list[str]:
    """The registry's ``expect`` paths (relative to the root) that lie in the destination, relative to it."""
    prefix = item.archive.unpack_to.rstrip("/")
    if not prefix:
        return list(item.archive.expect)
    return [p[len(prefix) + 1:] for p in item.archive.expect if p.startswith(prefix + "/")]


def process(item: Item, *, lock: dict, retries: int, timeout: float, quiet: bool, say) -> str:
    """Bring one archive into place; returns a one-line summary. Raises DownloadError."""
    a = item.archive
    path = item.download_path
    started = path.is_file() or path.with_name(path.name + ".part").is_file()
    done = completed(item)
    if done and present(item.root, a.expect):
        return (f"{a.file_name}: already in place under {item.destination} (verified and unpacked by an earlier "
                "run); nothing to do")
    if not done and not started and present(item.root, a.expect):
        return (f"{a.file_name}: its files are under {item.destination} already, with no completion record of "
                "this command (put there by hand or by an older version: not verified); nothing to do")
    # Without a valid marker but with a download of ours, an unpacking was cut short: redo it below.
    if path.is_file():
        say(f"{a.file_name}: found {path}, checking it")
    else:
        say(f"{a.file_name}: downloading {item.url}")
        path = fetch(item, retries=retries, timeout=timeout, quiet=quiet, say=say)
    sha256, record = verify(item, path, lock, quiet, say)
    try:
        item.marker.unlink(missing_ok=True)  # from here until the new one is written, nothing claims completeness
    except OSError as exc:
        raise DownloadError(f"{item.marker}: cannot remove the old completion marker ({exc.strerror})") from None
    say(f"   unpacking into {item.destination}/")
    try:
        result = unpack_archive(path, item.destination, kind="zip" if a.format == "zip" else "tar",
                                limit=size_limit(a.size or path.stat().st_size),
                                expect=expected_in_destination(item), quiet=quiet)
    except UnpackError as exc:
        if exc.archive_fault and record:  # nothing vouches for this file: let a rerun fetch it again
            path.unlink(missing_ok=True)
            raise DownloadError(f"{exc}; removed the download (rerun to fetch it again)") from None
        raise DownloadError(str(exc)) from None
    if not present(item.root, a.expect):
        missing = [p for p in a.expect if not present(item.root, [p])]
        raise DownloadError(f"{path}: unpacked into {item.destination}, but {item.root / missing[0]} is not there "
                            "(the archive's layout differs from the registry's)")
    if record:  # only now: a rejected or half-unpacked archive is never the one trusted later
        lock_file = record_lock(a, item.url, sha256, path.stat().st_size)
        lock[a.key] = {"sha256": sha256}
        say(f"   no checksum is published for {a.file_name}: recorded the sha256 of this first verified download, "
            f"{sha256}, in {lock_file}; later downloads are checked against it")
    from converters.io import write_json_atomic

    try:
        write_json_atomic(item.marker, {"archive": a.key, "url": item.url, "sha256": sha256,
                                        "unpacked_into": str(item.destination), "files": result.files,
                                        "bytes": result.bytes,
                                        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    except OSError as exc:
        raise DownloadError(f"{item.marker}: cannot write the completion marker ({exc.strerror or exc}); the files "
                            f"are unpacked under {item.destination} but not marked complete (rerun)") from None
    return (f"{a.file_name}: verified and unpacked {result.files:,} files ({human(result.bytes)}, within the bound "
            f"of {human(result.limit)}) into {item.destination}/ (the archive is kept at {path})")


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    releases = "\n".join(f"  {n:<44} {r.arch} ({r.archive.file_name})" for n, r in RELEASES.items())
    datasets = "\n".join(f"  {n:<44} {d.title}" for n, d in DATASETS.items())
    parser = argparse.ArgumentParser(
        prog="deeplab-download",
        description="Download official DeepLab releases and datasets by name: resumable, verified (size and "
        "checksum) before anything is unpacked, unpacked where the converters and dataset readers look. "
        "A second run checks and does nothing.",
        epilog=f"releases (unpack under --models-dir):\n{releases}\n\ndatasets (unpack under --data-root):\n"
        f"{datasets}\n\nWhere no checksum is published, the sha256 of the first verified download is recorded in "
        f"{LOCK_ENV} or ~/.config/deeplab-repro/downloads.lock.json and later downloads are checked against it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="releases and datasets (see below)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help=f"release folder (default {MODELS_DIR})")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help=f"dataset folder (default {DATA_ROOT})")
    parser.add_argument("--mirror", metavar="URL", help="fetch from URL + the original path instead of the "
                        "official host (e.g. a local copy served over HTTP)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (URL, size, checksum, destination); "
                        "no network, nothing written")
    parser.add_argument("--list", action="store_true", help="list the known names and exit")
    parser.add_argument("--retries", type=int, default=3, help="resume attempts within one run (default 3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.list:
        return
    if not args.names:
        parser.error("give at least one NAME (--list shows them)")
    if args.retries < 0 or args.timeout <= 0:
        parser.error("--retries must be >= 0 and --timeout > 0")
    if args.mirror and urllib.parse.urlsplit(args.mirror).scheme not in ("http", "https"):
        parser.error("--mirror must be an http:// or https:// URL")
    unknown = [n for n in args.names if n not in known_names()]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], known_names(), n=1)
        parser.error(f"unknown name '{unknown[0]}'" + (f"; did you mean '{close[0]}'?" if close else
                                                       " (--list shows the known names)"))


def run(args: argparse.Namespace) -> None:
    """Fetch everything ``args.names`` need; each failure is one ``error:`` line (the last one raised)."""
    if args.list:
        print("\n".join(known_names()))
        return
    items, manual = resolve(args.names, args.models_dir, args.data_root, args.mirror)
    lock = read_lock()
    if args.dry_run:
        for item in items:
            print("\n".join(describe(item, lock)))
        for d in manual:
            print(f"{d.name}: no direct download; {d.manual.format(data_root=args.data_root)}")
        return

    def say(text: str) -> None:
        print(text, file=sys.stderr)

    failures: list[DownloadError] = []
    for d in manual:
        if present(args.data_root, d.expect):
            print(f"{d.name}: already in place under {args.data_root / d.folder}; nothing to do")
        else:
            failures.append(DownloadError(f"{d.name}: {d.manual.format(data_root=args.data_root)}"))
    try:
        for item in items:
            try:
                print(process(item, lock=lock, retries=args.retries, timeout=args.timeout, quiet=args.quiet,
                              say=say))
                for step in next_steps(item):
                    print(f"   next: {step}")
            except DownloadError as exc:
                failures.append(exc)
    except KeyboardInterrupt:
        say("interrupted: a partial download is kept and resumes when you rerun the same command")
        raise
    for exc in failures[:-1]:
        print(f"error: {exc}", file=sys.stderr)
    if failures:
        raise failures[-1]


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, check=check_usage)


if __name__ == "__main__":
    sys.exit(main())
