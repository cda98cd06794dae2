"""Regenerate the screenshots the README and docs/ show, from a demo set of stacks on the real engine.

    .venv/bin/python scripts/screenshots.py [--out docs/images] [--prefix demo-] [--width 1280 --height 800]

It runs the product as a user meets it: ``compose-agent serve`` with embedded defaults (tokens from
the environment, no Vault) over a temporary stacks folder, a status panel in front of it, one person
(alice) who logs in, an agent on the gateway's token, and Debian's Chromium driven by Playwright. On
the local Docker engine it brings up, through the gateway:

- ``<prefix>shop``: a storefront, an order worker, a database with its volume and a cache;
- ``<prefix>wiki``: an app, and a backup job that has run and exited;
- ``<prefix>monitoring``: a privileged container with the Docker socket, which the policy guard
  refuses (so it is never created);
- ``<prefix>edge``: a swarm stack of two replicas, when the engine can be a single-node swarm manager.
  A swarm made here is left again; one found is used and kept; otherwise that shot is skipped.

The operator's policy makes ``down`` wait for a person, and the agent asks to take the wiki down with
its volume, so one approval is pending. The shots: login, dashboard, plan-down, plan-up, stack,
plan-refused, dashboard-swarm, logs, approval, dashboard-phone, and mcp-app (the stack view in the
chat host of the MCP App tests).

Everything it makes is removed at the end, on failure, Ctrl-C and SIGTERM too: containers, networks,
volumes, the swarm stack (and the swarm, if made here), the demo image tags, the processes and the
temporary folder. It needs the dev extra (Playwright), Debian's chromium, busybox-static, and the MCP
tools ``scripts/setup.sh`` installs. PNGs go through ``pngquant`` and ``optipng`` when on PATH. The
demo itself (stacks, images, the engine, the processes) is in ``scripts/screenshots_demo.py``;
``tests/distribution/test_screenshots.py`` runs this script at a small size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent
from playwright.async_api import Browser, Page, Route, ViewportSize, async_playwright, expect
from pydantic import BaseModel
from screenshots_demo import (
    PASSWORD,
    PERSON,
    PREFIX,
    STACKS,
    Demo,
    Options,
    ShotsFailed,
    borrowed_swarm,
    build_images,
    check_free,
    remove_project,
    start_services,
    write_stacks,
)

logger = logging.getLogger("screenshots")

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "gateway" / "app_harness"  # the chat host the MCP App tests render the view in
HARNESS_ORIGIN = "http://harness.test"
CHROMIUM = "/usr/bin/chromium"
# As tests/chromium.py: Debian's chromium as root in a container, fetching nothing on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
PHONE: ViewportSize = {"width": 390, "height": 844}
SHOTS = (
    *("login", "dashboard", "plan-down", "plan-up", "stack", "plan-refused", "dashboard-swarm", "logs", "approval"),
    *("dashboard-phone", "mcp-app"),
)

# --- the agent's calls -----------------------------------------------------------------------------------


def text_of(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise ShotsFailed(f"{tool} {arguments} failed: {text_of(result)}")
    return result


async def set_the_scene(demo: Demo, client: Client) -> None:
    """The agent brings the stacks up, deploys a wiki change, and asks to take the wiki down with its data."""
    name = demo.options.name
    await call(client, "up", {"project": name("shop"), "wait": True})
    await call(client, "up", {"project": name("wiki")})  # the backup job exits, so there is nothing to wait for
    # A new version through deploy, so that the stack's page lists two (before the approval is asked:
    # a stack that changes voids it).
    compose = (demo.stacks / name("wiki") / "compose.yaml").read_text().replace("42 pages", "43 pages")
    await call(client, "deploy", {"project": name("wiki"), "compose_yaml": compose})
    if demo.swarm:
        await call(client, "up", {"project": name("edge")})
    refused = await client.call_tool("up", {"project": name("monitoring")})
    if not refused.is_error or "privileged" not in text_of(refused):
        raise ShotsFailed(f"the guard did not refuse the privileged stack: {text_of(refused)}")
    asked = await client.call_tool("down", {"project": name("wiki"), "volumes": True})
    approval = (asked.meta or {}).get("compose-agent/approval")
    if not asked.is_error or not isinstance(approval, str):
        raise ShotsFailed(f"down on the wiki did not wait for a person: {text_of(asked)}")
    demo.approval = approval


# --- the shots -------------------------------------------------------------------------------------------


async def save(demo: Demo, page: Page, name: str) -> None:
    path = demo.options.out / f"{name}.png"
    await page.screenshot(path=str(path))
    if demo.options.optimise:
        optimise(path)
    demo.taken.append(path)
    logger.info("saved %s (%d bytes)", path, path.stat().st_size)


def optimise(path: Path) -> None:
    """A palette where it keeps the look (UI screenshots have few colours), then lossless recompression."""
    if shutil.which("pngquant"):
        subprocess.run(
            ["pngquant", "--force", "--skip-if-larger", "--strip", "--quality=80-98", "--output", str(path), str(path)],
            capture_output=True,
        )
    if shutil.which("optipng"):
        subprocess.run(["optipng", "-quiet", "-o2", "-strip", "all", str(path)], capture_output=True)


async def logged_in(browser: Browser, demo: Demo, path: str, viewport: ViewportSize) -> Page:
    """A page of its own where alice logged in on the way to ``path``."""
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    await page.goto(demo.panel.base + path)
    await expect(page.get_by_test_id("login-card")).to_be_visible()
    await save(demo, page, "login")
    await page.get_by_test_id("login-username").fill(PERSON)
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-submit").click()
    await expect(page).to_have_url(demo.panel.base + path)
    return page


async def shoot_panel(browser: Browser, demo: Demo) -> None:
    name, desktop = demo.options.name, ViewportSize(width=demo.options.width, height=demo.options.height)
    shop, wiki, refused, edge = name("shop"), name("wiki"), name("monitoring"), name("edge")
    page = await logged_in(browser, demo, f"/?q={demo.options.prefix}", desktop)
    for service in ("storefront", "db"):
        await expect(page.get_by_test_id(f"health-{shop}-{service}")).to_have_text("healthy", timeout=60_000)
    await expect(page.get_by_test_id(f"state-{wiki}-backup")).to_have_text("exited (0)", timeout=60_000)
    await expect(page.get_by_test_id(f"policy-{refused}")).to_contain_text("refused", timeout=30_000)
    if demo.swarm:
        await expect(page.get_by_test_id(f"replicas-{edge}-proxy")).to_have_text("2/2 running", timeout=60_000)
    await save(demo, page, "dashboard")

    await page.goto(f"{demo.panel.base}/?q={shop}")
    await page.get_by_test_id(f"action-{shop}-down").click()
    await expect(page.get_by_test_id("plan-down")).to_contain_text(f"{shop}-db-1", timeout=30_000)
    await expect(page.get_by_test_id(f"plan-volume-{shop}_db-data")).to_be_visible()
    await save(demo, page, "plan-down")
    await page.get_by_test_id("confirm-cancel").click()

    await page.goto(f"{demo.panel.base}/?q={wiki}")
    await page.get_by_test_id(f"action-{wiki}-up").click()
    await expect(page.get_by_test_id("plan-action-backup")).to_be_visible(timeout=30_000)
    await save(demo, page, "plan-up")
    await page.get_by_test_id("confirm-up-cancel").click()

    await page.goto(f"{demo.panel.base}/stacks/{wiki}")
    await expect(page.get_by_test_id("version-2").get_by_test_id("version-current")).to_be_visible()
    await expect(page.get_by_test_id(f"state-{wiki}-backup")).to_have_text("exited (0)", timeout=30_000)
    await save(demo, page, "stack")

    await page.goto(f"{demo.panel.base}/?q={refused}")
    await page.get_by_test_id(f"policy-details-{refused}").locator("summary").click()
    await page.get_by_test_id(f"action-{refused}-up").click()
    await expect(page.get_by_test_id("plan-refused")).to_contain_text("privileged", timeout=30_000)
    await save(demo, page, "plan-refused")

    if demo.swarm:
        await page.goto(f"{demo.panel.base}/?q={edge}")
        await expect(page.get_by_test_id(f"replicas-{edge}-proxy")).to_have_text("2/2 running", timeout=60_000)
        await save(demo, page, "dashboard-swarm")

    await page.goto(f"{demo.panel.base}/stacks/{shop}/logs")
    await page.get_by_test_id("log-follow").check()
    await page.get_by_test_id("log-refresh").click()
    await expect(page.get_by_test_id("log-status")).to_contain_text("following")
    await expect(page.get_by_test_id("log-output")).to_contain_text("receipt sent")
    await save(demo, page, "logs")

    await page.goto(f"{demo.panel.base}/approvals/{demo.approval}")
    card = page.get_by_test_id(f"approval-{demo.approval}")
    await expect(card.get_by_test_id("approval-status")).to_have_text("pending")
    await expect(card.get_by_test_id("approval-plan")).to_contain_text("DELETES named volume")
    await save(demo, page, "approval")
    session = await page.context.storage_state()  # alice's, so that the phone need not log in again
    await page.context.close()

    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, storage_state=session)
    phone = await context.new_page()
    await phone.goto(f"{demo.panel.base}/?q={shop}")
    await expect(phone.get_by_test_id(f"health-{shop}-storefront")).to_have_text("healthy")
    await save(demo, phone, "dashboard-phone")
    await phone.context.close()


# The conversation around the view: the person's question, and the assistant's answer under it. The
# harness's own status line is for its tests, not for the picture.
CHAT = """(name) => {
  document.getElementById("ask").textContent = `How is ${name} doing?`;
  const status = document.getElementById("harness-status");
  const reply = document.createElement("div");
  reply.className = "bubble";
  reply.innerHTML = '<div class="who">Assistant</div><div></div>';
  reply.lastChild.textContent = `All four services of ${name} are running, and the storefront and the database ` +
    "answer their health checks. The buttons above restart, start or stop a service through compose-agent.";
  status.before(reply);
  status.hidden = true;
}"""


def wire(model: BaseModel) -> dict[str, Any]:
    """A protocol object as it travels, for the host page."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def mcp_tools_modules() -> Path:
    """The node_modules holding the MCP Apps host bridge, as tests/gateway/mcp_tools.py finds it."""
    for candidate in (os.environ.get("MCP_TOOLS_DIR"), REPO / ".venv" / "mcp-tools"):
        if candidate and (Path(candidate) / "node_modules" / "@modelcontextprotocol" / "ext-apps").is_dir():
            return Path(candidate) / "node_modules"
    raise ShotsFailed("the MCP Apps host bridge is missing: run scripts/setup.sh (it installs scripts/mcp-tools)")


def serve_harness(modules: Path) -> Callable[[Route], Awaitable[None]]:
    """Playwright routes for the chat host and its node modules, and nothing else."""
    roots = {"/harness/": HARNESS.resolve(), "/node_modules/": modules.resolve()}

    async def handle(route: Route) -> None:
        path = route.request.url.removeprefix(HARNESS_ORIGIN).split("?", 1)[0]
        path = "/harness/host.html" if path == "/host.html" else path
        for prefix, root in roots.items():
            file = (root / path.removeprefix(prefix)).resolve()
            if path.startswith(prefix) and file.is_relative_to(root) and file.is_file():
                kind = "text/html" if file.suffix == ".html" else "text/javascript"
                await route.fulfill(status=200, body=file.read_bytes(), headers={"content-type": kind})
                return
        await route.fulfill(status=404, body="not in the harness")

    return handle


async def shoot_app(browser: Browser, demo: Demo, client: Client) -> None:
    """The stack view of the shop, in the chat host, handed a real ps result as a host would."""
    from gateway.mcp.dashboard import APP_URI

    shop = demo.options.name("shop")
    ps_tool = next(tool for tool in (await client.list_tools()).tools if tool.name == "ps")
    html = (await client.read_resource(APP_URI)).contents[0].text  # type: ignore[union-attr]
    result = await call(client, "ps", {"project": shop})

    async def host_call_tool(tool: str, arguments: str) -> str:
        called = await client.call_tool(tool, json.loads(arguments))
        return json.dumps(wire(called))

    context = await browser.new_context(viewport={"width": demo.options.width, "height": demo.options.height})
    page = await context.new_page()
    await page.route(f"{HARNESS_ORIGIN}/**", serve_harness(mcp_tools_modules()))
    await page.expose_function("hostCallTool", host_call_tool)
    await page.goto(f"{HARNESS_ORIGIN}/host.html")
    await expect(page.get_by_test_id("harness-status")).to_have_text("ready")
    await page.evaluate(
        "(args) => window.startApp(args)",
        {
            "html": html,
            "tool": wire(ps_tool),
            "toolInput": {"project": shop},
            "toolResult": wire(result),
        },
    )
    view = page.frame_locator("#app")
    await expect(view.get_by_test_id("stack-count")).to_have_text("4/4 running")
    await expect(view.get_by_test_id("health-storefront")).to_have_text("healthy")
    await page.evaluate(CHAT, shop)
    await save(demo, page, "mcp-app")
    await context.close()


async def shoot(demo: Demo) -> None:
    headers = {"Authorization": f"Bearer {demo.agent_token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=180)) as http:
        async with Client(streamable_http_client(f"{demo.gateway.base}/mcp", http_client=http), mode="legacy") as agent:
            await set_the_scene(demo, agent)
            lap("the agent set the stacks up")
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    await shoot_panel(browser, demo)
                    lap("the panel's shots are taken")
                    await shoot_app(browser, demo, agent)
                    lap("the MCP App's shot is taken")
                finally:
                    await browser.close()


# --- the whole run ---------------------------------------------------------------------------------------


def generate(options: Options) -> list[Path]:
    """Set the demo up, take the shots into ``options.out``, and remove everything; returns the PNGs.

    Raises:
        ShotsFailed: the engine, a tool or a page did not do what the demo needs; nothing is left behind.
    """
    options.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        cleanup.callback(lap, "removed everything it made")  # the first registered runs last
        engine = docker.from_env()
        cleanup.callback(engine.close)
        check_free(engine, options)
        work = Path(tempfile.mkdtemp(prefix=f"screenshots-{options.prefix}"))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        build_images(options, cleanup)
        for stack in STACKS:
            cleanup.callback(remove_project, engine, options.name(stack))
        swarm = cleanup.enter_context(borrowed_swarm(engine))
        if swarm:  # the stack goes before the swarm is left
            cleanup.callback(remove_project, engine, options.name("edge"))
        write_stacks(options, work / "stacks", swarm)
        demo = start_services(options, work, cleanup, swarm)
        lap("the gateway and the panel answer")
        try:
            anyio.run(shoot, demo)
        except Exception as exc:
            cause = innermost(exc)
            if isinstance(cause, ShotsFailed):
                raise cause from exc
            logs = f"--- gateway log\n{demo.gateway.tail()}\n--- panel log\n{demo.panel.tail()}"
            raise ShotsFailed(f"{type(cause).__name__}: {cause}\n{logs}") from exc
        return demo.taken


STARTED = time.monotonic()


def lap(what: str) -> None:
    logger.info("%s (%.1f s)", what, time.monotonic() - STARTED)


def innermost(exc: BaseException) -> BaseException:
    """The one error inside the task groups' exception groups (the MCP client's, say), if there is one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Shots: " + ", ".join(SHOTS))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="where the PNGs go (docs/images)")
    parser.add_argument("--prefix", default="demo-", help="the demo's project and image prefix, ending in '-'")
    parser.add_argument("--width", type=int, default=1280, help="the desktop viewport's width (1280)")
    parser.add_argument("--height", type=int, default=800, help="the desktop viewport's height (800)")
    parser.add_argument("--no-optimise", action="store_true", help="keep Chromium's PNGs as they are")
    args = parser.parse_args(argv)
    if not PREFIX.match(args.prefix):
        parser.error("--prefix: lower-case letters, digits and '-', ending in '-' (e.g. demo-)")
    if not (320 <= args.width <= 2560 and 240 <= args.height <= 1600):
        parser.error("--width from 320 to 2560 and --height from 240 to 1600")
    logging.basicConfig(level=logging.INFO, format="[screenshots] %(message)s")
    for noisy in ("httpx2", "httpx", "mcp"):  # one line per request says nothing here
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # SIGTERM unwinds like Ctrl-C, so the cleanup runs either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    options = Options(args.out, args.prefix, args.width, args.height, not args.no_optimise)
    try:
        taken = generate(options)
    except ShotsFailed as exc:
        logger.error("failed, and removed what it made: %s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted; removed what it made")
        return 130
    skipped = sorted(set(SHOTS) - {path.stem for path in taken})
    total = sum(path.stat().st_size for path in taken)
    logger.info("%d shots, %d KB in all, in %s", len(taken), total // 1024, options.out)
    if skipped:
        logger.warning("skipped: %s (see above why)", ", ".join(skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
