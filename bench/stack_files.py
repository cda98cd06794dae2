"""What reaching the stacks dir by descriptor costs, beside the same work done by path.

    python bench/stack_files.py [--iterations 2000] [--json out.json]

The gateway opens stack folders and the state folder one ``O_NOFOLLOW`` step at a time, and reads a
file only after an ``O_PATH`` look says it is a regular file with one name (see ``gateway/folders.py``).
This times, in one temporary stacks dir on this machine's disk:

- reading a 1 KB file: ``Path.read_bytes()`` (by path, following links) against ``read_regular``;
- the files of a stack on disk (compose file and ``.env``): a by-path reading as the gateway did it
  before, against ``VersionStore.on_disk``;
- ``find_stack`` of a stack that exists and of one that does not (every ``ps``, ``up``, ``config``);
- ``history`` and ``read`` of a stack with 20 kept versions (``versions``, ``rollback``);
- ``install`` into an existing stack (two files written beside their targets and renamed: ``fsync``
  dominates), which ``deploy`` and ``rollback`` do once.

Nothing touches the engine. Prints a Markdown table in microseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Sample, machine_context, time_calls  # noqa: E402 - a script beside its helpers

from gateway.deploy.versions import Snapshot, VersionStore  # noqa: E402
from gateway.folders import read_regular  # noqa: E402
from gateway.stacks import COMPOSE_FILENAMES, find_stack  # noqa: E402

COMPOSE = b"services:\n  web:\n    image: busybox\n    command: ['sleep', '3600']\n" + b"# padding\n" * 90


def on_disk_by_path(folder: Path) -> tuple[Path, Snapshot] | None:
    """The reading the version store did before it went by descriptor: for comparison only."""
    for name in COMPOSE_FILENAMES:
        path = folder / name
        if path.is_file():
            try:
                env: bytes | None = (folder / ".env").read_bytes()
            except FileNotFoundError:
                env = None
            return path, Snapshot(path.read_bytes(), env)
    return None


def measure(args: argparse.Namespace) -> list[Sample]:
    n = args.iterations
    with tempfile.TemporaryDirectory(prefix="bench-stack-files-") as tmp:
        root = Path(tmp) / "stacks"
        folder = root / "web"
        folder.mkdir(parents=True)
        (folder / "compose.yaml").write_bytes(COMPOSE)
        (folder / ".env").write_bytes(b"A=1\n" * 10)
        store = VersionStore(root, keep=20)
        for v in range(20):
            store.record("web", Snapshot(COMPOSE + f"# {v}\n".encode(), b"A=1\n"), source="deploy", caller="bench")
        store.set_current("web", 20)
        compose = folder / "compose.yaml"
        samples = [
            time_calls("read a 1 KB file: Path.read_bytes (by path)", compose.read_bytes, iterations=n, warmup=50),
            time_calls(
                "read a 1 KB file: read_regular (O_PATH look, reopen)",
                lambda: read_regular(compose, limit=1 << 20),
                iterations=n,
                warmup=50,
            ),
            time_calls("a stack's files: by path (before)", lambda: on_disk_by_path(folder), iterations=n, warmup=50),
            time_calls(
                "a stack's files: VersionStore.on_disk (by descriptor)",
                lambda: VersionStore.on_disk(folder),
                iterations=n,
                warmup=50,
            ),
            time_calls("find_stack, a stack", lambda: find_stack(root, "web"), iterations=n, warmup=50),
            time_calls("find_stack, no such stack", lambda: find_stack(root, "nope"), iterations=n, warmup=50),
            time_calls("history of 20 versions", lambda: store.history("web"), iterations=max(n // 10, 10)),
            time_calls("read one kept version", lambda: store.read("web", 20), iterations=max(n // 10, 10)),
            time_calls(
                "install into an existing stack (2 files, fsync)",
                lambda: store.install("web", Snapshot(COMPOSE, b"A=2\n")),
                iterations=max(n // 20, 10),
            ),
        ]
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    before = machine_context()
    samples = measure(args)
    print(f"machine: {before} -> {machine_context()}")
    print("| operation | n | p50 µs | p95 µs |\n|---|---|---|---|")
    for s in samples:
        print(f"| {s.name} | {len(s.values)} | {s.p50 * 1000:.1f} | {s.p95 * 1000:.1f} |")
    if args.json:
        args.json.write_text(json.dumps([s.as_dict() for s in samples], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
