"""``python -m reproduce.tables [--readme README.md] [--check]``: print or embed the published tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reproduce.tables import render_published, sync_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the published DeepLab tables (reproduce/tables) as Markdown.")
    parser.add_argument("--readme", type=Path, help="write them between the README's markers instead of printing")
    parser.add_argument("--check", action="store_true", help="with --readme: exit 1 if the README is stale")
    args = parser.parse_args(argv)
    if args.readme is None:
        print(render_published(), end="")
        return 0
    try:
        current = sync_readme(args.readme, check=args.check)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.check and not current:
        print(f"{args.readme}: the published tables are stale; run python -m reproduce.tables --readme {args.readme}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
