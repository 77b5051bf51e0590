"""``python -m reproduce.tables [--readme README.md] [--check]``: print or embed the published tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from converters.cli import sync_readme_command
from reproduce.tables import render_published, sync_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the published DeepLab tables (reproduce/tables) as Markdown.")
    parser.add_argument("--readme", type=Path, help="write them between the README's markers instead of printing")
    parser.add_argument("--check", action="store_true", help="with --readme: exit 1 if the README is stale")
    args = parser.parse_args(argv)
    if args.readme is None:
        print(render_published(), end="")
        return 0
    return sync_readme_command(args.readme, sync_readme, check=args.check,
                               stale=f"the published tables are stale; run python -m reproduce.tables --readme "
                               f"{args.readme}")


if __name__ == "__main__":
    sys.exit(main())
