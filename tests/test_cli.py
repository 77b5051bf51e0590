"""The shared command-line contract (converters.cli): exit codes, one-line errors, device default."""

from __future__ import annotations

import argparse
import sys

import pytest

from converters.cli import resolve_device, run_main
from converters.errors import ConversionError, DeeplabError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--n", type=int, required=True)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.n < 0:
        parser.error("--n must not be negative")


@pytest.mark.parametrize("argv,raised,code", [
    (["--n", "1"], None, 0),
    (["--help"], None, 0),
    ([], None, 2),  # argparse usage error
    (["--n", "-1"], None, 2),  # the check's parser.error
    (["--n", "1"], DeeplabError("bad thing\nsecond line"), 1),
    (["--n", "1"], ConversionError("f.ckpt", "truncated", layer="conv1"), 1),
    (["--n", "1"], FileNotFoundError(2, "No such file or directory", "missing.pth"), 1),
    (["--n", "1"], KeyboardInterrupt(), 130),
])
def test_exit_codes_and_one_line_errors(argv, raised, code, capsys) -> None:
    def run(args: argparse.Namespace) -> None:
        if raised is not None:
            raise raised

    assert run_main(_parser(), run, argv, check=_check) == code
    err = capsys.readouterr().err
    if code in (1, 130):
        assert err.startswith("error: ") and err.count("\n") == 1
    if isinstance(raised, ConversionError):
        assert err == "error: f.ckpt: layer 'conv1': truncated\n"
    if isinstance(raised, OSError):
        assert "missing.pth" in err


def test_a_bug_keeps_its_traceback() -> None:
    def run(args: argparse.Namespace) -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_main(_parser(), run, ["--n", "1"])


def test_device_auto_and_bad_devices(monkeypatch) -> None:
    import torch

    for cuda in (True, False):  # both machines, whatever this one has
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert resolve_device("auto") == ("cuda" if cuda else "cpu")
        assert resolve_device("cpu") == "cpu"
        with pytest.raises(DeeplabError, match="not a device"):
            resolve_device("tpu7")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeeplabError, match="no CUDA"):
        resolve_device("cuda:0")


def test_an_already_reported_failure_prints_nothing_more(capsys) -> None:
    from converters.errors import ReportedError

    def run(args: argparse.Namespace) -> None:
        print("error: a.mat: truncated", file=sys.stderr)
        raise ReportedError("1 bad file")

    assert run_main(_parser(), run, ["--n", "1"]) == 1
    assert capsys.readouterr().err == "error: a.mat: truncated\n"
