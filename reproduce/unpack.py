"""Staged, bounded unpacking of a downloaded tar or zip archive (used by ``deeplab-download``).

:func:`unpack_archive` either puts the whole archive in place or changes nothing the user can see:

1. it reads every member's header (a tar to its end-of-archive block, a zip's central directory) and
   refuses, before anything is written: absolute and ``..`` names, devices and other special files,
   duplicate members, a file and a folder of the same name, names that differ only in case (they would
   overwrite each other on macOS and Windows), members that go through a link, symbolic links that
   resolve outside the destination once every link of the archive is followed (``a -> .``,
   ``b -> a/..``), hard links to anything but an earlier file, encrypted or unknown zip members;
2. it bounds the total unpacked size before writing: the declared sizes (and, for a compressed tar, the
   bytes it inflates to while being read) may not exceed ``limit`` (see :func:`size_limit`) nor the free
   space;
3. it extracts into a fresh hidden staging folder inside the destination (the same filesystem, even when
   the destination is a link or a mount point), tar members through Python's ``data`` filter as a
   second line of defence, checks every file's size and that the ``expect`` paths are there;
4. only then it moves each top-level entry into the destination (merging into folders already there,
   replacing files; a file where a folder is, or the reverse, is refused before the first move).

On any failure, including a full disk, the staging folder is removed, folders it created are removed,
and the error is one line naming the archive.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import shutil
import stat
import struct
import sys
import tarfile
import zipfile
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from converters.errors import DeeplabError

MAX_RATIO = 20  # unpacked bytes per archive byte: weights and images compress far less than this
MIN_LIMIT = 64 << 20  # ... but a small archive may always unpack to this much
MAX_MEMBERS = 1_000_000  # the largest release (COCO train2017) has 118k
MAX_DEPTH = 64  # folders within folders; deeper trees only come from hostile archives (and break makedirs)
MAX_NAME = 1024  # characters of a member's path (Linux allows 4096 for a whole path)
STAGING_PREFIX = ".deeplab-unpacking-"
_ENV_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EXDEV}
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# What the standard library's decoders raise on a damaged archive (bz2 and gzip raise OSError without errno).
_DECODE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, ValueError,
                  NotImplementedError, RuntimeError, struct.error, KeyError, IndexError, OverflowError,
                  gzip.BadGzipFile)


class UnpackError(DeeplabError):
    """A refused or failed unpacking; nothing was put in place. ``archive_fault``: the archive itself is bad
    (as opposed to the disk being full or unwritable)."""

    def __init__(self, message: str, *, archive_fault: bool = True) -> None:
        super().__init__(message)
        self.archive_fault = archive_fault


@dataclass(frozen=True)
class Member:
    """One archive member: ``parts`` is its normalised path (``()`` for the archive's own root folder)."""

    name: str
    parts: tuple[str, ...]
    kind: str  # "file", "dir", "symlink", "hardlink"
    size: int = 0
    target: str = ""


@dataclass(frozen=True)
class Unpacked:
    """What :func:`unpack_archive` put in place."""

    files: int
    bytes: int
    limit: int


def human(n: float | None) -> str:
    """``1.2 GB`` style (powers of 1000)."""
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def size_limit(archive_bytes: int) -> int:
    """The most an archive of ``archive_bytes`` may unpack to: :data:`MAX_RATIO` times it, at least
    :data:`MIN_LIMIT` (a 1 MB zip that inflates to 1 GiB is refused)."""
    return max(MAX_RATIO * archive_bytes, MIN_LIMIT)


def present(root: Path, patterns: Iterable[str]) -> bool:
    """Every path (glob patterns allowed) exists under ``root``."""
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            if not any(root.glob(pattern)):
                return False
        elif not (root / pattern).exists():
            return False
    return True


def _q(name: str) -> str:
    """A member name for a one-line message (control characters escaped, very long names shortened)."""
    text = repr(name)
    return text if len(text) <= 200 else text[:150] + "..." + text[-40:]


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


# ----------------------------------------------------------------------------- reading and checking members
def _parts(name: str, archive: Path) -> tuple[str, ...]:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]):
        raise UnpackError(f"{archive}: member {_q(name)} has an absolute path; refusing to unpack")
    if ".." in path.parts:
        raise UnpackError(f"{archive}: member {_q(name)} points outside the destination ('..'); refusing to unpack")
    if len(name) > MAX_NAME or len(path.parts) > MAX_DEPTH:
        raise UnpackError(f"{archive}: member {_q(name)} has a path longer than {MAX_NAME} characters or deeper "
                          f"than {MAX_DEPTH} folders; refusing to unpack")
    return tuple(p for p in path.parts if p not in ("", "."))


def _bound(archive: Path, total: int, limit: int, what: str) -> None:
    if total > limit:
        raise UnpackError(f"{archive}: {what} {human(total)} ({total:,} bytes), more than the bound of "
                          f"{human(limit)} ({MAX_RATIO} x the archive's size, at least {human(MIN_LIMIT)}); "
                          "refusing to unpack")


class _Recording:
    """A file object that remembers its last read: the block where tarfile stopped reading headers."""

    def __init__(self, fileobj, compressed: bool) -> None:
        self.fileobj = fileobj
        self.compressed = compressed
        self.last = b""

    def read(self, n: int = -1) -> bytes:
        self.last = self.fileobj.read(n)
        return self.last

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fileobj.seek(offset, whence)

    def tell(self) -> int:
        return self.fileobj.tell()

    def close(self) -> None:
        self.fileobj.close()


def _open_stream(path: Path) -> _Recording:
    """The archive's bytes, decompressed (gzip, bzip2, xz recognised by their magic numbers)."""
    import bz2

    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b":
        return _Recording(gzip.GzipFile(path, "rb"), True)
    if magic[:3] == b"BZh":
        return _Recording(bz2.BZ2File(path, "rb"), True)
    if magic == b"\xfd7zXZ\x00":
        return _Recording(lzma.LZMAFile(path, "rb"), True)
    return _Recording(open(path, "rb"), False)


def _tar_members(tf: tarfile.TarFile, stream: _Recording, path: Path, limit: int) -> list[tuple[Member, object]]:
    """Every member of ``tf`` (read header after header; the bytes read are bounded by ``limit``)."""
    size = path.stat().st_size
    out: list[tuple[Member, object]] = []
    for info in tf:
        # tf.offset: where the next header starts in the decompressed stream, i.e. what reading on would inflate
        _bound(path, tf.offset, limit, "reading the tar stream reached")
        if len(out) >= MAX_MEMBERS:
            raise UnpackError(f"{path}: more than {MAX_MEMBERS:,} members; refusing to unpack")
        if not stream.compressed and info.offset_data + (info.size if info.isreg() else 0) > size:
            raise UnpackError(f"{path}: truncated tar archive (member {_q(info.name)} ends past the end of the "
                              "file); nothing unpacked")
        parts = _parts(info.name, path)
        if info.isreg():
            member = Member(info.name, parts, "file", info.size)
        elif info.isdir():
            member = Member(info.name, parts, "dir")
        elif info.issym():
            member = Member(info.name, parts, "symlink", target=info.linkname)
        elif info.islnk():
            member = Member(info.name, parts, "hardlink", target=info.linkname)
        else:
            raise UnpackError(f"{path}: member {_q(info.name)} is a device or special file; refusing to unpack")
        out.append((member, info))
    if not out:
        raise UnpackError(f"{path}: empty or not a tar archive; nothing unpacked")
    # tarfile ends its listing quietly at a damaged header or at the end of the data; only a zero block
    # (the end-of-archive marker) is a real end.
    if len(stream.last) < tarfile.BLOCKSIZE:
        raise UnpackError(f"{path}: truncated tar archive (no end-of-archive block after member "
                          f"{_q(out[-1][0].name)}); nothing unpacked")
    if stream.last.count(0) != len(stream.last):
        raise UnpackError(f"{path}: damaged tar header at byte {tf.offset:,} of the tar stream (after member "
                          f"{_q(out[-1][0].name)}); nothing unpacked")
    return out


def _zip_members(zf: zipfile.ZipFile, path: Path) -> list[tuple[Member, object]]:
    infos = zf.infolist()
    if not infos:
        raise UnpackError(f"{path}: empty zip archive; nothing unpacked")
    if len(infos) > MAX_MEMBERS:
        raise UnpackError(f"{path}: more than {MAX_MEMBERS:,} members; refusing to unpack")
    out: list[tuple[Member, object]] = []
    for info in infos:
        parts = _parts(info.filename, path)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnpackError(f"{path}: member {_q(info.filename)} is a symbolic link; refusing to unpack")
        if info.flag_bits & 0x1:
            raise UnpackError(f"{path}: member {_q(info.filename)} is encrypted; refusing to unpack")
        if info.compress_type not in _ZIP_METHODS:
            raise UnpackError(f"{path}: member {_q(info.filename)} uses compression method {info.compress_type}, "
                              "which is not supported; refusing to unpack")
        kind = "dir" if info.filename.endswith("/") else "file"
        out.append((Member(info.filename, parts, kind, info.file_size if kind == "file" else 0), info))
    return out


def _resolve(start: tuple[str, ...], target: str, links: dict[tuple[str, ...], str]) -> tuple[str, ...] | None:
    """Where the link target ``target`` (relative to folder ``start``) lands once the archive's own links
    are followed; ``None`` if it leaves the archive's root, is absolute or loops."""
    stack = list(start)
    todo = deque(target.replace("\\", "/").split("/"))
    if target.startswith(("/", "\\")):
        return None
    hops = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(part)
        link = links.get(tuple(stack))
        if link is not None:
            hops += 1
            if hops > 40 or link.startswith(("/", "\\")):  # 40: Linux's own limit on links followed
                return None
            stack.pop()
            todo.extendleft(reversed(link.replace("\\", "/").split("/")))
    return tuple(stack)


def check_members(members: list[Member], archive: Path) -> None:
    """Refuse collisions and links that would escape or be followed while unpacking (see the module doc)."""
    explicit: dict[tuple[str, ...], Member] = {}
    order: dict[tuple[str, ...], int] = {}
    for i, m in enumerate(members):
        if not m.parts:
            if m.kind != "dir":
                raise UnpackError(f"{archive}: member {_q(m.name)} has no name; refusing to unpack")
            continue
        old = explicit.get(m.parts)
        if old is not None:
            if old.kind == m.kind == "dir":
                continue  # a folder listed twice: harmless
            raise UnpackError(f"{archive}: member {_q(m.name)} appears twice (the second would overwrite the first);"
                              " refusing to unpack")
        explicit[m.parts] = m
        order[m.parts] = i
    cased: dict[str, tuple[str, ...]] = {}
    for parts, m in explicit.items():
        for depth in range(1, len(parts) + 1):
            prefix = parts[:depth]
            above = explicit.get(prefix) if depth < len(parts) else None
            if above is not None and above.kind == "symlink":
                raise UnpackError(f"{archive}: member {_q(m.name)} goes through the link {_q(above.name)} inside the "
                                  "archive; refusing to unpack")
            if above is not None and above.kind != "dir":
                raise UnpackError(f"{archive}: member {_q(m.name)} is inside {_q(above.name)}, which the archive also "
                                  "has as a file; refusing to unpack")
            other = cased.setdefault("/".join(prefix).casefold(), prefix)
            if other != prefix:
                raise UnpackError(f"{archive}: members {_q('/'.join(other))} and {_q('/'.join(prefix))} differ only "
                                  "in case (one would overwrite the other on macOS and Windows); refusing to unpack")
    links = {parts: m.target for parts, m in explicit.items() if m.kind == "symlink"}
    for parts, m in explicit.items():
        if m.kind in ("symlink", "hardlink") and not 0 < len(m.target) <= MAX_NAME:
            raise UnpackError(f"{archive}: link {_q(m.name)} has an empty target or one longer than {MAX_NAME} "
                              "characters; refusing to unpack")
        if m.kind == "symlink" and _resolve(parts[:-1], m.target, links) is None:
            raise UnpackError(f"{archive}: link {_q(m.name)} -> {_q(m.target)} points outside the destination "
                              "(or loops) once the archive's links are followed; refusing to unpack")
        if m.kind == "hardlink":
            target = explicit.get(_parts(m.target, archive))
            if target is None or target.kind not in ("file", "hardlink") or order[target.parts] > order[parts]:
                raise UnpackError(f"{archive}: hard link {_q(m.name)} -> {_q(m.target)} does not name an earlier "
                                  "file of the archive; refusing to unpack")


def _check_landing(members: list[Member], dest: Path, archive: Path) -> None:
    """Resolve every member (and link target) against what is already in ``dest``: a link there that points
    elsewhere stops the unpacking before it starts."""
    root = dest.resolve()

    def inside(path: Path, name: str) -> None:
        out = path.resolve()
        if out != root and root not in out.parents:
            raise UnpackError(f"{archive}: member {_q(name)} would land outside {dest} (at {out}, through a link in "
                              "the destination); nothing unpacked")

    for m in members:
        if m.parts:
            inside(dest.joinpath(*m.parts), m.name)
        if m.kind == "symlink":
            inside(dest.joinpath(*m.parts[:-1]) / m.target, m.name)


# ----------------------------------------------------------------------------- staging and moving into place
def _remove_stale_staging(dest: Path) -> None:
    """Staging folders of runs that were killed (their process is gone)."""
    if not dest.is_dir():
        return
    for old in dest.glob(STAGING_PREFIX + "*"):
        pid = old.name[len(STAGING_PREFIX):].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, OSError):
            pass


def _plan_moves(staging: Path, dest: Path, archive: Path) -> list[tuple[Path, Path]]:
    """(staged, final) renames that put the staged tree into ``dest``; conflicts refused before any move."""
    moves: list[tuple[Path, Path]] = []

    def walk(src_dir: Path, dst_dir: Path) -> None:
        for entry in sorted(os.scandir(src_dir), key=lambda e: e.name):
            src, dst = Path(entry.path), dst_dir / entry.name
            if not os.path.lexists(dst):
                moves.append((src, dst))
            elif entry.is_dir(follow_symlinks=False):
                if not dst.is_dir():
                    raise UnpackError(f"{archive}: {dst} is a file, the archive has a folder there; nothing "
                                      "unpacked (move the file away and rerun)", archive_fault=False)
                walk(src, dst)
            elif dst.is_dir() and not dst.is_symlink():
                raise UnpackError(f"{archive}: {dst} is a folder, the archive has a file there; nothing unpacked "
                                  "(move the folder away and rerun)", archive_fault=False)
            else:
                moves.append((src, dst))  # an older copy of the file: replaced

    walk(staging, dest)
    return moves


def _check_staged(members: list[Member], staging: Path, archive: Path) -> tuple[int, int]:
    """Every member is in the staging folder as the archive declares it; returns (files, bytes)."""
    files = total = 0
    for m in members:
        if not m.parts:
            continue
        try:
            st = os.lstat(staging.joinpath(*m.parts))
        except FileNotFoundError:
            raise UnpackError(f"{archive}: member {_q(m.name)} did not unpack; nothing unpacked") from None
        ok = {"dir": stat.S_ISDIR(st.st_mode), "symlink": stat.S_ISLNK(st.st_mode),
              "hardlink": stat.S_ISREG(st.st_mode) and st.st_nlink > 1,
              "file": stat.S_ISREG(st.st_mode) and st.st_size == m.size}
        if not ok[m.kind]:
            raise UnpackError(f"{archive}: member {_q(m.name)} did not unpack as declared ({m.kind}, {m.size:,} "
                              f"bytes); nothing unpacked")
        if m.kind == "file":
            files += 1
            total += m.size
    return files, total


def _extract(kind: str, handle, pairs: list[tuple[Member, object]], staging: Path, quiet: bool) -> None:
    from tqdm import tqdm

    bar = {"desc": "unpacking", "disable": quiet, "file": sys.stderr, "leave": False}
    for member, info in tqdm(pairs, **bar):
        if kind == "zip":
            target = staging.joinpath(*member.parts)
            if member.kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with handle.open(info) as src, open(target, "xb") as dst:  # zipfile stops at the declared size
                shutil.copyfileobj(src, dst, 1 << 20)
        elif hasattr(tarfile, "data_filter"):
            handle.extract(info, staging, filter="data")
        else:  # Python without extraction filters: every member was checked by check_members
            handle.extract(info, staging)


def unpack_archive(archive: Path, dest: Path, *, kind: str, limit: int, expect: Iterable[str] = (),
                   quiet: bool = True) -> Unpacked:
    """Unpack ``archive``, a ``kind`` ``"zip"`` or ``"tar"`` (plain, gzip, bzip2 or xz), into ``dest`` as the
    module doc describes.

    ``limit``: the most the archive may unpack to (:func:`size_limit`); ``expect``: paths (glob patterns
    allowed) relative to ``dest`` the archive must provide. Raises :class:`UnpackError`; then nothing
    is under ``dest`` that was not there before.
    """
    archive, dest = Path(archive), Path(dest)
    is_zip = kind == "zip"
    existed = [p for p in (dest, *dest.parents) if p.exists()][0]
    created = [p for p in (dest, *dest.parents) if not p.exists()]
    staging: Path | None = None
    try:
        with _opened(kind, archive) as (handle, stream):
            try:
                pairs = _zip_members(handle, archive) if is_zip else _tar_members(handle, stream, archive, limit)
            except _DECODE_ERRORS as exc:
                raise UnpackError(f"{archive}: not a complete {kind} archive ({_one_line(exc)}); nothing "
                                  "unpacked") from None
            members = [m for m, _ in pairs]
            check_members(members, archive)
            declared = sum(m.size for m in members if m.kind == "file")
            _bound(archive, declared, limit, "unpacks to")
            free = shutil.disk_usage(existed).free
            if declared > free:
                raise UnpackError(f"{archive}: unpacks to {human(declared)}, only {human(free)} free under {existed};"
                                  " nothing unpacked", archive_fault=False)
            _check_landing(members, dest, archive)
            dest.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(dest)
            staging = dest / f"{STAGING_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
            staging.mkdir()
            try:
                _extract(kind, handle, pairs, staging, quiet)
            except _DECODE_ERRORS as exc:
                raise UnpackError(f"{archive}: not a complete {kind} archive ({_one_line(exc)}); nothing "
                                  "unpacked") from None
            except OSError as exc:
                if exc.errno is None:  # gzip / bz2 decoding errors
                    raise UnpackError(f"{archive}: not a complete {kind} archive ({_one_line(exc)}); nothing "
                                      "unpacked") from None
                raise UnpackError(f"{archive}: cannot unpack into {dest} ({exc.strerror or exc}); nothing "
                                  "unpacked", archive_fault=exc.errno not in _ENV_ERRNOS) from None
        files, total = _check_staged(members, staging, archive)
        expect = list(expect)
        missing = [p for p in expect if not present(staging, [p])]
        if missing:
            raise UnpackError(f"{archive}: has no {missing[0]} (the archive's layout differs from the registry's); "
                              "nothing unpacked")
        moves = _plan_moves(staging, dest, archive)
        try:
            for src, dst in moves:
                os.replace(src, dst)
        except OSError as exc:
            raise UnpackError(f"{archive}: cannot move the unpacked files into {dest} ({exc.strerror or exc}); the "
                              "files moved so far stay, not marked complete (rerun)", archive_fault=False) from None
        shutil.rmtree(staging)  # only the folders that were merged into existing ones are left in it
        return Unpacked(files, total, limit)
    except BaseException:  # KeyboardInterrupt included: nothing staged stays behind
        _undo(staging, created)
        raise


def _undo(staging: Path | None, created: list[Path]) -> None:
    """Remove the staging folder and the (now empty) folders this call created."""
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    for folder in created:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            break


class _opened:
    """``with _opened(kind, path) as (handle, stream)``: a TarFile over a recording stream, or a ZipFile."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.closers: list = []

    def __enter__(self):
        try:
            if self.kind == "zip":
                zf = zipfile.ZipFile(self.path)
                self.closers.append(zf)
                return zf, None
            stream = _open_stream(self.path)
            self.closers.append(stream)
            tf = tarfile.open(fileobj=stream, mode="r:")
            tf.errorlevel = 2  # a member tarfile could not create (e.g. a link) is an error, not a skipped member
            self.closers.append(tf)
            return tf, stream
        except _DECODE_ERRORS + (OSError,) as exc:
            self.__exit__()
            if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, gzip.BadGzipFile):
                raise UnpackError(f"{self.path}: cannot read ({exc.strerror or exc})", archive_fault=False) from None
            raise UnpackError(f"{self.path}: not a complete {self.kind} archive ({_one_line(exc)}); nothing "
                              "unpacked") from None

    def __exit__(self, *exc) -> None:
        for closer in reversed(self.closers):
            try:
                closer.close()
            except Exception:  # noqa: BLE001, S110 - closing a damaged stream may fail again; the error is raised
                pass
        self.closers.clear()
