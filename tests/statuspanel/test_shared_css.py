"""The MCP App's page and the panel look alike: the CSS the page copies from the panel stays the panel's.

``gateway/mcp/ui/stack.html`` is one self-contained file that hosts load as a resource, so it cannot link
``panel.css``; it carries copies of the parts between ``/* shared: NAME */`` and ``/* end shared: NAME */``.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources

import pytest

SHARED = re.compile(r"/\* shared: (?P<name>[a-z]+) \*/\n(?P<css>.*?)/\* end shared: (?P=name) \*/", re.DOTALL)
PARTS = ("palette", "components")


def shared_parts(text: str) -> dict[str, str]:
    """Each shared part of a stylesheet (or of a page's style element), by name."""
    parts: dict[str, str] = {}
    for match in SHARED.finditer(text):
        assert match["name"] not in parts, f"two parts named {match['name']!r}"
        parts[match["name"]] = match["css"]
    return parts


def panel_css() -> str:
    return resources.files("statuspanel").joinpath("static/panel.css").read_text(encoding="utf-8")


def app_page() -> str:
    # The way the gateway reads it to serve it (gateway/mcp/dashboard.py).
    return resources.files("gateway.mcp").joinpath("ui/stack.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("part", PARTS)
def test_the_mcp_app_carries_the_panels_shared_css_unchanged(part: str) -> None:
    panel, app = shared_parts(panel_css()), shared_parts(app_page())
    assert part in panel, f"statuspanel/static/panel.css has no part marked /* shared: {part} */"
    assert part in app, f"gateway/mcp/ui/stack.html has no part marked /* shared: {part} */"
    drift = "".join(
        difflib.unified_diff(
            panel[part].splitlines(keepends=True),
            app[part].splitlines(keepends=True),
            "statuspanel/static/panel.css",
            "gateway/mcp/ui/stack.html",
        )
    )
    assert panel[part] == app[part], f"the {part} part differs; copy it from panel.css into stack.html:\n{drift}"


def test_every_shared_part_is_in_both_and_fetches_nothing() -> None:
    panel, app = shared_parts(panel_css()), shared_parts(app_page())
    assert sorted(panel) == sorted(app) == sorted(PARTS)
    for part, css in panel.items():
        # The page must render without the network: a shared rule may not fetch a font or an image.
        assert "url(" not in css and "@import" not in css, part
