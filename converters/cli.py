"""What every converter command line shares: exit codes and the weights-plus-provenance write.

Exit codes: 0 success, 1 bad input (one line on stderr, no output file), 2 usage error
(argparse), 130 interrupted (no output file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from converters.errors import ConversionError
from converters.io import provenance_path, save_state_dict, sha256_file, write_json_atomic


def run_cli(run: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Call ``run(args)`` and turn its failures into the converters' exit codes and one-line errors."""
    try:
        run(args)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no output written", file=sys.stderr)
        return 130
    return 0


def write_weights(state_dict: Mapping[str, Any], out: Path, record: dict[str, Any]) -> None:
    """Save ``state_dict`` at ``out`` and ``record`` (plus the weights' sha256) beside it, atomically.

    If the provenance record cannot be written the weights are removed too: weights never
    exist without their provenance.
    """
    save_state_dict(state_dict, out)
    try:
        record.setdefault("weights", {})["sha256"] = sha256_file(out)
        write_json_atomic(provenance_path(out), record)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
