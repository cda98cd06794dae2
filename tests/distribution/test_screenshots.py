"""``scripts/screenshots.py``, the script that makes the README's pictures, run as a person runs it.

At a small size and with a prefix of its own, into a temporary folder: it sets its demo up on the real
engine through a real gateway, panel and Chromium, so this is its integration test. Every shot must be
a whole, valid PNG of the size asked for, and nothing the script made may be left: no container,
network, volume, swarm service, image, process or temporary folder, and no swarm it made.
"""

from __future__ import annotations

import fcntl
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import random_name

pytestmark = [pytest.mark.docker, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "screenshots.py"
SWARM_LOCK = Path("/tmp/compose-agent-test-swarm.lock")  # the tests' swarm protocol, which the script follows
WIDTH, HEIGHT = 800, 560
PHONE = (390, 844)
SIZES = {
    "login": (WIDTH, HEIGHT),
    "dashboard": (WIDTH, HEIGHT),
    "plan-down": (WIDTH, HEIGHT),
    "plan-up": (WIDTH, HEIGHT),
    "stack": (WIDTH, HEIGHT),
    "plan-refused": (WIDTH, HEIGHT),
    "dashboard-swarm": (WIDTH, HEIGHT),
    "logs": (WIDTH, HEIGHT),
    "approval": (WIDTH, HEIGHT),
    "mcp-app": (WIDTH, HEIGHT),
    "dashboard-phone": PHONE,
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by PNG colour type


def png_size(data: bytes) -> tuple[int, int]:
    """The width and height of a PNG whose every chunk checks out and whose pixels all inflate."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    offset, kinds, header, pixels = 8, [], b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"chunk {kind!r} at {offset} is damaged"
        kinds.append(kind)
        header = body if kind == b"IHDR" else header
        pixels += body if kind == b"IDAT" else b""
        offset += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds, kinds
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert interlace == 0, "an interlaced PNG: the rows below are counted for a plain one"
    row = 1 + (width * CHANNELS[colour] * depth + 7) // 8  # a filter byte, then the row's pixels
    assert len(zlib.decompress(pixels)) == row * height, "the image data does not hold every row"
    return width, height


def labels(item: Any) -> dict[str, str]:
    """A container's, network's or volume's labels, as docker-py lists each."""
    attrs = item.attrs
    return dict(attrs.get("Labels") or (attrs.get("Config") or {}).get("Labels") or {})


def left_by(docker_client: Any, prefix: str) -> list[str]:
    """What on the engine or in this machine is named by the script's prefix."""
    found: list[str] = []
    for label in ("com.docker.compose.project", "com.docker.stack.namespace"):
        for kind, items in (
            ("container", docker_client.containers.list(all=True, filters={"label": label})),
            ("network", docker_client.networks.list(filters={"label": label})),
            ("volume", docker_client.volumes.list(filters={"label": label})),
        ):
            found += [f"{kind} {item.name}" for item in items if labels(item).get(label, "").startswith(prefix)]
    if (docker_client.info().get("Swarm") or {}).get("ControlAvailable"):
        found += [f"service {s.name}" for s in docker_client.services.list() if s.name.startswith(prefix)]
    namespace = prefix.rstrip("-") + "/"
    tags = [tag for image in docker_client.images.list() for tag in image.tags]
    found += [f"image {tag}" for tag in tags if tag.startswith(namespace)]
    marker = f"screenshots-{prefix}"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                found.append(f"process {cmdline.parent.name}")
        except OSError:
            pass  # it ended while we looked
    found += [f"folder {path}" for path in Path(tempfile.gettempdir()).glob(f"{marker}*")]
    return found


def swarm_is_free() -> bool:
    """Whether no test session holds the engine's swarm now (so nobody else made or keeps one)."""
    with SWARM_LOCK.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True


def test_the_screenshot_script_makes_every_shot_and_leaves_nothing_behind(tmp_path: Path, docker_client: Any) -> None:
    prefix = random_name("shots") + "-"
    out = tmp_path / "images"
    swarm_before = (docker_client.info().get("Swarm") or {}).get("LocalNodeState")
    args = [sys.executable, str(SCRIPT), "--out", str(out), "--prefix", prefix]
    done = subprocess.run(
        [*args, "--width", str(WIDTH), "--height", str(HEIGHT)], capture_output=True, text=True, timeout=420
    )
    output = f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-6000:]}"
    try:
        assert done.returncode == 0, output
        assert "skipp" not in done.stderr, output  # the swarm shot too: CI's engine can always be a swarm
        assert sorted(path.name for path in out.iterdir()) == sorted(f"{name}.png" for name in SIZES)
        for name, size in SIZES.items():
            data = (out / f"{name}.png").read_bytes()
            assert png_size(data) == size, name
            assert len(data) < 400_000, f"{name}.png is {len(data)} bytes"  # a viewport, not a whole page
    finally:
        assert left_by(docker_client, prefix) == [], output
    if swarm_before == "inactive" and swarm_is_free():
        assert (docker_client.info().get("Swarm") or {}).get("LocalNodeState") == "inactive", "the swarm made was kept"


def test_the_script_refuses_a_bad_prefix_and_size_before_touching_anything() -> None:
    for bad in (["--prefix", "../x-"], ["--width", "10"]):  # each run starts Python with Playwright and the SDK
        done = subprocess.run([sys.executable, str(SCRIPT), *bad], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "error:" in done.stderr, (bad, done.stderr)


def test_the_script_leaves_alone_what_it_finds_under_its_names(
    tmp_path: Path, docker_client: Any, busybox_image: str
) -> None:
    prefix = random_name("shots") + "-"
    theirs = f"{prefix.rstrip('-')}/postgres:16"  # someone's image, under a name the demo would use
    docker_client.images.get(busybox_image).tag(theirs)
    try:
        args = [sys.executable, str(SCRIPT), "--prefix", prefix, "--out", str(tmp_path)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and f"the image {theirs} already exists" in done.stderr, done.stderr
        assert docker_client.images.get(theirs).id == docker_client.images.get(busybox_image).id
        assert left_by(docker_client, prefix) == [f"image {theirs}"]
        assert list(tmp_path.iterdir()) == []
    finally:
        docker_client.images.remove(theirs)


def test_the_committed_pictures_are_the_scripts_and_small() -> None:
    """The README's budget: the demo's pictures at the script's default size, a few hundred kB in all."""
    total = 0
    for name, size in SIZES.items():
        data = (REPO / "docs" / "images" / f"{name}.png").read_bytes()
        assert png_size(data) == (PHONE if size == PHONE else (1280, 800)), name
        total += len(data)
    assert total < 400_000, f"{total} bytes: run the script where pngquant and optipng are installed"


def test_the_png_check_catches_a_damaged_or_cut_file() -> None:
    # A 2x1 grey PNG made by hand, then broken in the two ways a bad write breaks one.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    def png(pixels: bytes) -> bytes:
        header = struct.pack(">IIBBBBB", 2, 1, 8, 0, 0, 0, 0)
        return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")

    good = png(b"\x00\x80\x80")  # one row: its filter byte, then two grey pixels
    assert png_size(good) == (2, 1)
    damaged = bytearray(good)
    damaged[-20] ^= 0xFF
    with pytest.raises(AssertionError, match="damaged"):
        png_size(bytes(damaged))
    with pytest.raises(AssertionError, match="every row"):
        png_size(png(b"\x00\x80"))
