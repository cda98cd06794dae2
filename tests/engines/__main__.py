"""``python -m tests.engines build|sweep``: make the engine image ahead of a run, or remove what dead runs left.

build   build the engine image for the current recipe unless it exists; print its tag
sweep   remove the engines, volumes, networks, files and ssh config of test runs that died
"""

from __future__ import annotations

import argparse
import sys

from tests.engines.errors import EngineError
from tests.engines.image import ensure_engine_image
from tests.engines.leftovers import sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.engines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["build", "sweep"])
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_engine_image())
        else:
            removed = sweep()
            print(f"removed {len(removed)} engine(s){': ' if removed else ''}{', '.join(removed)}")
    except EngineError as exc:
        print(f"[engines] FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
