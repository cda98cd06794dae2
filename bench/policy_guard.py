"""What the policy guard costs: on `up` and `config` (always fresh) and on `list_stacks` (cached marks).

    python bench/policy_guard.py [--iterations 30] [--stacks 20] [--services 60] [--json out.json]

It writes a typical stack with include, extends, env files, a build context and a secret (the
references the guard follows), a large one (``--services`` services of many keys, spread over five
included files), and ``--stacks`` small ones into a temporary stacks dir, then times:

- the strict reading alone (reads and hashes every file, never Compose), typical and large;
- the judge alone on Compose's model (the allowlist walk), typical and large;
- reader and judge together: what the guard adds to the Compose run it needs anyway;
- a full evaluation (reader, ``docker compose --profile '*' config --format json``, judge),
  which ``up`` and ``config`` add when the stack is new or changed;
- what ``up`` adds when nothing changed: the kept verdict re-checked file by file and path by path;
- ``up`` itself when nothing changed, all of the gateway's own work (resolving the stack, the lock,
  both audit lines, the guard's re-check, the judged model's run file) with Compose's ``up`` stubbed
  out: the part of ``up`` the gateway adds, and what issue 20's phase 2 may not make dearer by more
  than a millisecond (run this same script on both versions to compare);
- a bare ``docker compose config --format json`` run, for comparison;
- ``list_stacks`` over all the stacks: cold (a fresh gateway: its first answer, which waits for
  marks only so long, and the calls until every stack is marked), warm within the mark TTL, and
  warm past it (every file's signature stat-ed, nothing re-judged).

Nothing is created on the engine; ``list_stacks`` only lists containers. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Sample, random_name, run_and_report, time_async_calls  # noqa: E402 - a script beside its helpers

import gateway.policy.guard  # noqa: E402
from gateway.audit import AuditLog  # noqa: E402
from gateway.compose.cli import ComposeCli, ComposeOutput  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.metrics import ControlPlane  # noqa: E402
from gateway.operations import ComposeOperations  # noqa: E402
from gateway.policy.findings import Context  # noqa: E402
from gateway.policy.guard import PolicyGuard  # noqa: E402
from gateway.policy.judge import judge_model  # noqa: E402
from gateway.policy.reader import Reading, read_stack  # noqa: E402
from gateway.policy.rules import Policy  # noqa: E402
from gateway.stacks import find_stack  # noqa: E402

FULL = """
include:
  - extra/compose.yaml
services:
  web:
    image: busybox
    ports: ["127.0.0.1::8080"]
    volumes: ["./site:/srv:ro", "data:/data"]
    healthcheck: {test: ["CMD", "true"], interval: 1s}
  api:
    build: ./api
    env_file: [app.env]
    secrets: [token]
    depends_on: [web]
  worker:
    extends: {file: common.yaml, service: base}
volumes:
  data:
secrets:
  token: {file: ./token.txt}
"""
FILES = {
    "compose.yaml": FULL,
    "site/index.html": "hi\n",
    "api/Dockerfile": "FROM scratch\n",
    "app.env": "MODE=bench\n",
    "token.txt": "t\n",
    ".env": "TAG=1\n",
    "common.yaml": "services:\n  base:\n    image: busybox\n    env_file: app.env\n",
    "extra/compose.yaml": "services:\n  extra:\n    image: busybox\n",
}
SMALL = "services:\n  app:\n    image: busybox\n    volumes: ['./data:/data']\n"


def large_stack(services: int) -> dict[str, str]:
    """A stack of ``services`` services with the keys real stacks use, a fifth in the main file and the
    rest in four included files, each with an env file."""

    def service(n: int) -> str:
        env = "".join(f"      VAR_{i}: value-{n}-{i}\n" for i in range(10))
        labels = "".join(f"      org.example.label{i}: x{n}\n" for i in range(5))
        after = f"    depends_on: [svc{n - 1}]\n" if n % 12 else ""
        return (
            f"  svc{n}:\n    image: busybox:1.36\n    command: [sleep, '3600']\n    init: true\n"
            f"    environment:\n{env}    labels:\n{labels}    env_file: [common.env]\n"
            f"    ports: ['127.0.0.1::{8000 + n}']\n    volumes: ['./data/{n}:/data', 'cache:/cache']\n"
            "    healthcheck: {test: [CMD, 'true'], interval: 5s, retries: 3}\n"
            "    logging: {driver: json-file, options: {max-size: 10m, max-file: '3'}}\n"
            "    deploy: {resources: {limits: {cpus: '0.5', memory: 64M}}}\n"
            f"    security_opt: ['no-new-privileges:true']\n    cap_drop: [ALL]\n{after}"
        )

    per_file = max(1, services // 5)
    files = {"common.env": "".join(f"COMMON_{i}=c{i}\n" for i in range(20))}
    main = "include:\n" + "".join(f"  - part{p}/compose.yaml\n" for p in range(1, 5)) + "services:\n"
    main += "".join(service(n) for n in range(per_file))
    files["compose.yaml"] = main + "volumes:\n  cache: {}\n"
    for p in range(1, 5):
        first = p * per_file
        part = "".join(service(n) for n in range(first, min(services, first + per_file)))
        part = part.replace(f"    depends_on: [svc{first - 1}]\n", "")
        files[f"part{p}/compose.yaml"] = "services:\n" + part + "volumes:\n  cache: {}\n"
        files[f"part{p}/common.env"] = files["common.env"]
    return files


def write(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


async def main(args: argparse.Namespace) -> list[Sample]:
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "stacks"
        name, large_name = random_name("guard"), random_name("guard")
        write(root / name, FILES)
        write(root / large_name, large_stack(args.services))
        for _ in range(args.stacks - 2):
            write(root / random_name("guard"), {"compose.yaml": SMALL})
        stack, large = find_stack(root, name), find_stack(root, large_name)
        assert stack is not None and stack.folder is not None and stack.compose_file is not None
        assert large is not None and large.folder is not None and large.compose_file is not None
        cli = ComposeCli.locate(None, os.environ)
        guard = PolicyGuard(Policy())

        for label, target in (("typical", stack), (f"large, {args.services} services", large)):
            assert target.folder is not None and target.compose_file is not None
            model = (await guard.evaluate(target, cli)).model
            context = guard.context(target)
            folder, files = target.folder, [target.compose_file]
            reading = read_stack(folder, files)
            print(f"# {label}: {len(reading.files)} files read, {reading.nodes} YAML nodes", file=sys.stderr)

            async def read(folder: Path = folder, files: list[Path] = files) -> None:
                read_stack(folder, files)

            async def judge(
                model: dict[str, Any] = model, context: Context = context, reading: Reading = reading
            ) -> None:
                judge_model(reading, model, context)

            async def both(
                folder: Path = folder,
                files: list[Path] = files,
                model: dict[str, Any] = model,
                context: Context = context,
            ) -> None:
                judge_model(read_stack(folder, files), model, context)

            samples.append(await time_async_calls(f"strict reading, {label}", read, iterations=args.iterations * 5))
            samples.append(
                await time_async_calls(f"judge on the model, {label}", judge, iterations=args.iterations * 5)
            )
            samples.append(await time_async_calls(f"reader + judge, {label}", both, iterations=args.iterations * 5))

        async def evaluate() -> None:
            await PolicyGuard(Policy()).evaluate(stack, cli)

        async def bare_config() -> None:
            await cli.run(name, ["config", "--format", "json"], compose_file=stack.compose_file, cwd=stack.folder)

        reusing = PolicyGuard(Policy())
        await reusing.evaluate(stack, cli)

        async def enforce_unchanged() -> None:
            await reusing.enforce(stack, cli, "up")

        samples.append(
            await time_async_calls("full evaluation (a changed or new stack)", evaluate, iterations=args.iterations)
        )
        samples.append(
            await time_async_calls(
                "up's guard when nothing changed (re-checked)", enforce_unchanged, iterations=args.iterations * 5
            )
        )
        samples.append(
            await time_async_calls("bare compose config, for comparison", bare_config, iterations=args.iterations)
        )

        samples.append(await up_unchanged(root, name, Path(tmp), args.iterations * 5))

        settings = load_settings({"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}, stacks_dir=root)
        cold = Sample(f"list_stacks, {args.stacks} stacks, cold: first answer")
        complete = Sample(f"list_stacks, {args.stacks} stacks, cold: until every stack is marked")
        for _ in range(max(3, args.iterations // 10)):
            ops = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=os.environ)
            with complete.timing():
                with cold.timing():
                    listing = await ops.list_stacks()
                while any(entry.policy is None and not entry.external for entry in listing.stacks):
                    listing = await ops.list_stacks()
            ops.close()
        samples += [cold, complete]
        ops = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=os.environ)
        await ops.list_stacks()
        samples.append(
            await time_async_calls(
                f"list_stacks, {args.stacks} stacks, warm (within TTL)", ops.list_stacks, iterations=50
            )
        )
        gateway.policy.guard.MARK_TTL_S = 0.0
        samples.append(
            await time_async_calls(
                f"list_stacks, {args.stacks} stacks, warm (signatures re-stat-ed)", ops.list_stacks, iterations=50
            )
        )
        ops.close()
    return samples


async def up_unchanged(root: Path, name: str, tmp: Path, iterations: int) -> Sample:
    """``ops.up`` of an unchanged stack with Compose's own ``up`` stubbed: the gateway's part of it."""
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp), "COMPOSE_AGENT_STATE_DIR": str(tmp / "state")}
    settings = load_settings(environ, stacks_dir=root)
    audit = AuditLog(tmp / "audit.log")
    ops = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, audit=audit, environ=os.environ)
    real_run = ComposeCli.run

    async def stubbed(self: ComposeCli, project: str, args: Any, **options: Any) -> ComposeOutput:
        if list(args)[:1] == ["up"]:
            return ComposeOutput(stdout="")
        return await real_run(self, project, args, **options)

    ComposeCli.run = stubbed  # type: ignore[method-assign]
    try:
        await ops.up(name)  # judged once; every call after that finds the stack unchanged

        async def up() -> None:
            await ops.up(name)

        return await time_async_calls(
            "up when nothing changed, the gateway's own work (Compose's up stubbed)", up, iterations=iterations
        )
    finally:
        ComposeCli.run = real_run  # type: ignore[method-assign]
        ops.close()
        audit.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--stacks", type=int, default=20)
    parser.add_argument("--services", type=int, default=60, help="services in the large stack")
    parser.add_argument("--json", type=Path)
    run_and_report(main, parser.parse_args())
