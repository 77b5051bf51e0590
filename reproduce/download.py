"""``deeplab-download``: fetch official releases and datasets by name, verify them, unpack them in place.

Everything it knows (URLs, sizes, checksums, where each archive unpacks) comes from the one
registry, :mod:`converters.releases`. For each archive it

1. does nothing when the files it provides are already in place (a second run only checks);
2. downloads into ``<root>/downloads/<archive>/`` through a ``.part`` file, resuming an
   interrupted transfer with an HTTP ``Range`` request (retried a few times within one run;
   a later run resumes the same ``.part``);
3. verifies the byte size and the published sha256 (or md5 where only that is published)
   BEFORE anything is unpacked; where no checksum is published it checks that the archive reads
   to its end and records the sha256 of this first verified download in a user-level lock file
   (``$DEEPLAB_DOWNLOAD_LOCK``, default ``~/.config/deeplab-repro/downloads.lock.json``), against
   which later downloads are checked;
4. unpacks safely (no member may land outside the destination: absolute paths, ``..``, links
   pointing out and device files are refused) into the folder the converters or dataset readers
   read, and checks that the expected files are there.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

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


def present(root: Path, patterns: Iterable[str]) -> bool:
    """Every path (glob patterns allowed) exists under ``root``."""
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            if not any(root.glob(pattern)):
                return False
        elif not (root / pattern).exists():
            return False
    return True


def human(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


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
        f"  unpack into: {item.destination}/ ({a.format})",
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
    path = lock_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DownloadError(f"{path}: unreadable lock file ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise DownloadError(f"{path}: not a JSON object; fix or remove it")
    return data


def record_lock(archive: Archive, url: str, sha256: str, size: int) -> Path:
    from converters.io import write_json_atomic

    data = read_lock()
    data[archive.key] = {"file": archive.file_name, "url": url, "sha256": sha256, "size": size,
                         "first_verified_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return write_json_atomic(lock_path(), dict(sorted(data.items())))


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


# ----------------------------------------------------------------------------- safe unpacking
def _safe_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]):
        raise DownloadError(f"{archive}: member '{name}' has an absolute path; refusing to unpack")
    if ".." in path.parts:
        raise DownloadError(f"{archive}: member '{name}' points outside the destination ('..'); refusing to unpack")
    return path


def check_tar(path: Path) -> list[tarfile.TarInfo]:
    """Read the whole tar (every member, to the end of a compressed stream) and refuse unsafe members."""
    try:
        with tarfile.open(path, "r:*") as tf:
            members = tf.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise DownloadError(f"{path}: not a complete tar archive ({exc}); nothing unpacked") from None
    if not members:
        raise DownloadError(f"{path}: empty or not a tar archive; nothing unpacked")
    size = path.stat().st_size
    links: set[PurePosixPath] = set()
    for m in members:
        name = _safe_name(m.name, path)
        if not path.name.endswith((".gz", ".tgz")) and m.offset_data + (m.size if m.isreg() else 0) > size:
            raise DownloadError(f"{path}: truncated tar archive (member '{m.name}' ends past the end of the file); "
                                "nothing unpacked")
        if any(parent in links for parent in name.parents):
            raise DownloadError(f"{path}: member '{m.name}' goes through a link inside the archive; refusing to unpack")
        if m.isdev() or not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise DownloadError(f"{path}: member '{m.name}' is a device or special file; refusing to unpack")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname)
            joined = (name.parent / target) if m.issym() else target
            if target.is_absolute() or _escapes(joined):
                raise DownloadError(f"{path}: link '{m.name}' -> '{m.linkname}' points outside the destination; "
                                    "refusing to unpack")
            links.add(name)
    return members


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def check_zip(path: Path, full: bool) -> list[zipfile.ZipInfo]:
    """List the zip (its central directory must be intact) and refuse unsafe members; ``full``: also CRC-check
    every member (used where no published checksum vouches for the file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            bad = zf.testzip() if full else None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise DownloadError(f"{path}: not a complete zip archive ({exc}); nothing unpacked") from None
    if bad is not None:
        raise DownloadError(f"{path}: member '{bad}' is corrupt (CRC mismatch); nothing unpacked")
    if not infos:
        raise DownloadError(f"{path}: empty zip archive; nothing unpacked")
    for info in infos:
        _safe_name(info.filename, path)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DownloadError(f"{path}: member '{info.filename}' is a symbolic link; refusing to unpack")
    return infos


def unpack(item: Item, path: Path, quiet: bool) -> None:
    """Extract ``path`` into the item's destination; every member was checked beforehand (check_zip/check_tar).

    Before anything is written, every member's path is resolved against what is already on disk, so a
    link already inside the destination that points elsewhere stops the unpacking before it starts.
    """
    from tqdm import tqdm

    dest = item.destination
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()

    def inside(name: str) -> None:
        out = (dest / name).resolve()
        if out != root and root not in out.parents:
            raise DownloadError(f"{path}: member '{name}' would land outside {dest} (at {out}, through a link in "
                                "the destination); nothing unpacked")

    bar = {"desc": f"unpacking {path.name}", "disable": quiet, "file": sys.stderr, "leave": False}
    if item.archive.format == "zip":
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                inside(info.filename)
            for info in tqdm(infos, **bar):
                zf.extract(info, dest)
    else:
        with tarfile.open(path, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                inside(m.name)
            for m in tqdm(members, **bar):
                if hasattr(tarfile, "data_filter"):
                    tf.extract(m, dest, filter="data")
                else:  # Python without extraction filters: members were checked by check_tar
                    tf.extract(m, dest)


# ----------------------------------------------------------------------------- one archive
def process(item: Item, *, lock: dict, retries: int, timeout: float, quiet: bool, say) -> str:
    """Bring one archive into place; returns a one-line summary. Raises DownloadError."""
    a = item.archive
    path = item.download_path
    started = path.is_file() or path.with_name(path.name + ".part").is_file()
    if present(item.root, a.expect) and (item.marker.is_file() or not started):
        # Without the marker but with a download of ours, an unpacking was interrupted: redo it below.
        how = "verified at download" if item.marker.is_file() else "found in place (not downloaded by this command)"
        return f"{a.file_name}: already in place under {item.destination} ({how}); nothing to do"
    if path.is_file():
        say(f"{a.file_name}: found {path}, checking it")
    else:
        say(f"{a.file_name}: downloading {item.url}")
        path = fetch(item, retries=retries, timeout=timeout, quiet=quiet, say=say)
    sha256, record = verify(item, path, lock, quiet, say)
    if a.format == "zip":
        check_zip(path, full=record)
    else:
        check_tar(path)
    if record:
        lock_file = record_lock(a, item.url, sha256, path.stat().st_size)
        lock[a.key] = {"sha256": sha256}
        say(f"   no checksum is published for {a.file_name}: recorded the sha256 of this first verified download, "
            f"{sha256}, in {lock_file}; later downloads are checked against it")
    say(f"   unpacking into {item.destination}/")
    unpack(item, path, quiet)
    if not present(item.root, a.expect):
        missing = [p for p in a.expect if not present(item.root, [p])]
        raise DownloadError(f"{path}: unpacked into {item.destination}, but {item.root / missing[0]} is not there "
                            "(the archive's layout differs from the registry's)")
    from converters.io import write_json_atomic

    write_json_atomic(item.marker, {"archive": a.key, "url": item.url, "sha256": sha256,
                                    "unpacked_into": str(item.destination),
                                    "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return f"{a.file_name}: verified and unpacked into {item.destination}/ (the archive is kept at {path})"


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
