"""The one command-line contract every command follows, and the weights-plus-provenance write.

``main(argv=None) -> int`` of every command is ``return run_main(build_parser(), run, argv)``:

* exit 0: success (also ``--help``);
* exit 1: bad input: a :class:`converters.errors.DeeplabError` (or an ``OSError`` such as a
  missing file or a full disk), printed as ONE line ``error: <message>`` on stderr, no traceback;
* exit 2: usage error (argparse, ``parser.error`` from a ``check`` function, or a
  :class:`converters.errors.UsageError` raised by ``run``);
* exit 130: interrupted (Ctrl-C), one line on stderr.

Shared flag names: ``--data-root``, ``--models-dir``, ``--out``, ``--device`` (``auto``: cuda when
torch sees one, else cpu; see :func:`add_device_argument` / :func:`resolve_device`). Help texts are
written in the parser, never sliced from a module docstring (``python -OO`` strips those).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from converters.errors import ConversionError, DeeplabError, ReportedError, UsageError
from converters.io import (
    WEIGHT_SUFFIXES,
    check_outputs_spare_inputs,
    provenance_path,
    save_state_dict,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_cli(run: Callable[[argparse.Namespace], object], args: argparse.Namespace, *,
            interrupted: str = "interrupted") -> int:
    """Call ``run(args)`` and turn its failures into the exit codes and one-line errors above
    (``interrupted``: the line printed after Ctrl-C, e.g. what is kept and how to resume)."""
    try:
        run(args)
    except UsageError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ReportedError:
        return EXIT_BAD_INPUT
    except DeeplabError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a file the user named cannot be read or written
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def run_main(
    parser: argparse.ArgumentParser | Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], object],
    argv: Sequence[str] | None = None,
    *,
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
    interrupted: str = "interrupted",
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), apply ``check(parser, args)`` (usage rules that call
    ``parser.error``), then ``run(args)``; returns the exit status instead of raising SystemExit.

    ``parser`` may be a function that builds it (for a parser whose choices come from a data file: a
    damaged file is then the one-line error, exit 1)."""
    if not isinstance(parser, argparse.ArgumentParser):
        try:
            parser = parser()
        except DeeplabError as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        args = parser.parse_args(argv)
        if check is not None:
            check(parser, args)
    except SystemExit as exc:  # --help (0) or a usage error (2, argparse has printed it)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run_cli(run, args, interrupted=interrupted)


def program_name(module: str) -> str:
    """The name ``usage:`` shows: the console script's (``deeplab-evaluate``) when run as one, else
    ``python -m <module>``."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("deeplab-") else f"python -m {module}"


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while a native library talks there: TensorFlow's C++ start-up lines
    (oneDNN notice, "Could not find cuda drivers", "failed call to cuInit") are written before its log level
    applies; FFmpeg (through OpenCV) prints "moov atom not found" when a video is read back."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# --------------------------------------------------------------------------- shared flags
def add_device_argument(parser: argparse.ArgumentParser | Any, *, default: str = "auto") -> None:
    """``--device``: cpu, cuda, cuda:N or auto (cuda when available, else cpu)."""
    parser.add_argument("--device", default=default,
                        help=f"cpu, cuda, cuda:N or auto (cuda when available, else cpu); default {default}")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a cuda device without CUDA is bad input."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeeplabError(f"--device {name}: no CUDA device is available to torch (use --device cpu or auto)")
    try:
        torch.device(name)
    except RuntimeError:
        raise DeeplabError(f"--device {name}: not a device (cpu, cuda, cuda:N or auto)") from None
    return name


# --------------------------------------------------------------------------- the converters' output
def write_weights(state_dict: Mapping[str, Any], out: Path, record: dict[str, Any]) -> None:
    """Save ``state_dict`` at ``out`` and ``record`` (plus the weights' sha256) beside it, atomically.

    If the provenance record cannot be written the weights are removed too: weights never
    exist without their provenance.
    """
    save_state_dict(state_dict, out)
    _write_provenance(out, record)


def _write_provenance(out: Path, record: dict[str, Any]) -> None:
    """``record`` plus the sha256 of the weights at ``out``, beside them; the weights go if it fails."""
    try:
        record.setdefault("weights", {})["sha256"] = sha256_file(out)
        write_json_atomic(provenance_path(out), record)
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def write_converted(args: argparse.Namespace, *, out: Path, inputs: Callable[[argparse.Namespace], Sequence[Path]],
                    convert: Callable[[argparse.Namespace], Any]) -> Path:
    """The PyTorch converters' ``run`` after the output is chosen: check it, convert, write; return ``out``.

    ``out`` must be a weights file that overwrites none of ``inputs(args)`` (the source files);
    ``convert(args)`` returns the in-memory result (``state_dict``, ``provenance``, ``num_classes``).
    Prints one line unless ``args.quiet``.
    """
    check_weights_output(out, inputs(args))
    converted = convert(args)
    record = {**converted.provenance, "weights": {"file": out.name, "tensors": len(converted.state_dict)}}
    write_weights(converted.state_dict, out, record)
    if not args.quiet:
        print_written(out, record, converted.num_classes)
    return out


def check_weights_output(out: Path, sources: Sequence[Path]) -> None:
    """``out`` is a weights file name and neither it nor its provenance overwrites one of ``sources``."""
    if out.suffix not in WEIGHT_SUFFIXES:
        raise ConversionError(out, f"output must end in {' or '.join(WEIGHT_SUFFIXES)}")
    check_outputs_spare_inputs([out, provenance_path(out)], sources)


def print_written(out: Path, record: Mapping[str, Any], num_classes: int | None) -> None:
    """The converters' one line after writing ``out`` and its provenance ``record``."""
    classes = f", {num_classes} classes" if num_classes else ""
    print(f"wrote {out} ({record['weights']['tensors']} tensors, {record['architecture']}{classes}) and "
          f"{provenance_path(out)}")


def generated_file_command(argv: list[str] | None, *, prog: str, description: str, path: Path,
                           render: Callable[[], str], command: str, source: str) -> int:
    """``--write`` / ``--check`` for a file generated from code (``render()`` gives its text): rewrite ``path``
    atomically, or exit 1 with one ``error:`` line if it differs (stale: regenerate with ``command``);
    ``source`` names what it is generated from, in the help. Exit 2 for a usage error."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"rewrite the file from {source}")
    group.add_argument("--check", action="store_true", help=f"exit 1 if the file differs from {source}")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    text = render()
    if args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            print(f"error: {path} is stale: regenerate it with {command}", file=sys.stderr)
            return 1
        return 0
    try:
        write_text_atomic(path, text)
    except DeeplabError as exc:  # converters.io's OutputError: a full disk, a read-only folder
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def sync_readme_command(readme: Path, sync: Callable[..., bool], *, check: bool, stale: str) -> int:
    """The README generators' ``--readme FILE [--check]``: ``sync(readme, check=check)``; exit 0, or 1 with
    one ``error:`` line for an unreadable file, missing markers, or (``--check``) stale blocks (``stale``)."""
    try:
        current = sync(readme, check=check)
    except (OSError, ValueError, DeeplabError) as exc:  # DeeplabError: converters.io's OutputError (a full disk)
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    if check and not current:
        print(f"error: {readme}: {stale}", file=sys.stderr)
        return 1
    return 0


def write_weights_streamed(specs: Sequence[Any], produce: Callable[[str], Any], out: Path,
                           record: dict[str, Any]) -> None:
    """Like :func:`write_weights`, but the tensors of ``specs`` (``converters.streaming.TensorSpec``) are
    asked for one at a time with ``produce(key)`` and written as they come (``converters.streaming``)."""
    from converters.streaming import write_state_dict_streamed

    write_state_dict_streamed(out, specs, produce)
    _write_provenance(out, record)
