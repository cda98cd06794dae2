"""The engine image: Debian 12 with dockerd, sshd, openssl and the static busybox, built once and reused.

The tag carries a hash of the recipe below, so a changed recipe builds a new image and an unchanged one
is reused across runs (a CI machine starts from nothing, a developer's machine keeps it). Two test
processes that need it at once build it once: the second waits on a file lock and finds it made.

Building takes one to three minutes: debootstrap a minbase root filesystem and import it (or start from
the identical one scripts/fresh-machine-check.sh leaves, which saves most of that), install the packages
in a running container, commit. debootstrap needs root, as the CI machines and scripts/setup.sh have.
Build it ahead of a run with ``python -m tests.engines build``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.engines.engine import container_run_args
from tests.engines.errors import EngineError, run

__all__ = ["IMAGE_REPO", "Report", "engine_image_tag", "ensure_engine_image", "print_report"]

Report = Callable[[str], None]

IMAGE_REPO = "compose-agent-test-engine"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PACKAGES = ("docker.io", "openssh-server", "openssl", "busybox-static")
# What scripts/fresh-machine-check.sh imports (bump with its `recipe`); see _base_image.
FRESH_MINBASE = "compose-agent-fresh-debian12:minbase-r1"
LOCK = Path("/tmp/compose-agent-test-engine-image.lock")
BUILD_TIMEOUT_S = 900

# sshd for the tests: root by key only, one ed25519 host key made at engine start, no reverse DNS
# (there is none on the bridge, and each lookup would cost a timeout).
SSHD_CONFIG = """\
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

# Run once in the build container. policy-rc.d keeps the packages' maintainer scripts from starting
# dockerd or sshd in it (their state would be committed into every engine); the host keys sshd's
# package makes are deleted so that each engine makes its own.
INSTALL_SCRIPT = f"""
set -eu
printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends {" ".join(PACKAGES)}
rm -f /usr/sbin/policy-rc.d /etc/ssh/ssh_host_*
mkdir -p /etc/ssh/sshd_config.d
cat >/etc/ssh/sshd_config.d/compose-agent-test.conf <<'EOF'
{SSHD_CONFIG}EOF
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \\
  /usr/share/doc/* /usr/share/man/* /usr/share/info/*
"""

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def print_report(line: str) -> None:
    """The default progress report: one line on stderr."""
    print(f"[engines] {line}", file=sys.stderr, flush=True)


def _host_ca_digest() -> str:
    """The host's CA bundle is part of the recipe: a new interception CA must reach the image."""
    try:
        return hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest()
    except OSError:
        return "none"


def engine_image_tag() -> str:
    """The tag of the image this recipe makes: ``compose-agent-test-engine:r<hash>``."""
    recipe = {
        "version": 2,
        "suite": SUITE,
        "mirror": MIRROR,
        "security": SECURITY_MIRROR,
        "packages": PACKAGES,
        "install": INSTALL_SCRIPT,
        "ca": _host_ca_digest(),
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"{IMAGE_REPO}:r{digest[:12]}"


def _image_exists(tag: str) -> bool:
    return run(["docker", "image", "inspect", tag], check=False).returncode == 0


@contextmanager
def _build_lock() -> Iterator[None]:
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_engine_image(report: Report = print_report) -> str:
    """The engine image's tag, built first if this recipe has no image on the local engine yet.

    Raises:
        EngineError: not root, no debootstrap, or a build step failed (its output is in the message).
    """
    tag = engine_image_tag()
    if _image_exists(tag):
        return tag
    with _build_lock():
        # Another process may have built it while this one waited for the lock.
        if _image_exists(tag):
            report(f"{tag} was built by another run meanwhile")
            return tag
        _build(tag, report)
    return tag


def _add_host_cas(rootfs: Path) -> int:
    """Add the certificates this machine trusts beyond Debian's to the image, as local CAs.

    Containers reach the package archives through this machine's TLS interception. As local CAs
    (not only lines in the bundle) they survive the update-ca-certificates that package installs run.
    """
    bundle = rootfs / "etc/ssl/certs/ca-certificates.crt"
    known = {"".join(cert.split()) for cert in _PEM.findall(bundle.read_text())}
    try:
        host = _PEM.findall(HOST_CA_BUNDLE.read_text())
    except OSError:
        return 0
    extra = [cert for cert in host if "".join(cert.split()) not in known]
    local = rootfs / "usr/local/share/ca-certificates"
    local.mkdir(parents=True, exist_ok=True)
    for n, cert in enumerate(extra):
        (local / f"host-{n}.crt").write_text(cert + "\n")
    with bundle.open("a") as out:
        out.writelines(cert + "\n" for cert in extra)
    return len(extra)


def _unmount_under(root: Path) -> None:
    # A failed debootstrap can leave proc or sys mounted in the root filesystem: never rm -rf through a mount.
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(root) + "/")), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def _rootfs(work: Path, report: Report) -> Path:
    rootfs = work / "rootfs"
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise EngineError("debootstrap is not installed: run bash scripts/setup.sh (or apt-get install debootstrap)")
    report(f"debootstrap --variant=minbase {SUITE} (about 40 s)")
    step = time.monotonic()
    argv = [debootstrap, "--variant=minbase", "--include=ca-certificates", SUITE, str(rootfs), MIRROR]
    run(argv, timeout=BUILD_TIMEOUT_S, what=f"debootstrap; check the network to {MIRROR}")
    added = _add_host_cas(rootfs)
    report(
        f"root filesystem ready in {time.monotonic() - step:.0f} s ({added} CA certificate(s) of this machine added)"
    )
    # As on a machine that never ran apt-get update (and as the fresh-machine check's): no lists, no packages.
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    # As a cloud image has them: the point releases' updates and the security archive.
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\ndeb {SECURITY_MIRROR} {SUITE}-security main\n"
    )
    return rootfs


def _base_image(work: Path, name: str, report: Report) -> str:
    """The root filesystem to install into: the fresh-machine check's if this engine has it, else one made here.

    scripts/fresh-machine-check.sh (run by CI before the tests) imports the same root filesystem: minbase
    with ca-certificates, this machine's CAs as local CAs, the updates and security archives. Starting
    from it saves the debootstrap, the longest step of a build from nothing.
    """
    if _image_exists(FRESH_MINBASE):
        report(f"starting from {FRESH_MINBASE} (the fresh-machine check's root filesystem, the same recipe)")
        return FRESH_MINBASE
    if os.geteuid() != 0:
        raise EngineError("building the engine image needs root (debootstrap); run the tests as root, as CI does")
    rootfs = _rootfs(work, report)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    env = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    run(["docker", "import", "-c", env, "-c", "ENV LANG=C.UTF-8", "-", name], stdin=tar.stdout, what="docker import")
    tar.wait()
    return name


def _build(tag: str, report: Report) -> None:
    started = time.monotonic()
    report(f"building the engine image {tag}: one to three minutes, once per recipe")
    work = Path(tempfile.mkdtemp(prefix="compose-agent-engine-image-", dir="/var/tmp"))
    builder = f"compose-agent-engine-build-{os.getpid()}"
    base = ""
    try:
        base = _base_image(work, f"{tag}-base", report)
        # Imported: the root filesystem on disk is no longer needed, and is large.
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
        run(["docker", "run", "-d", "--name", builder, *container_run_args(), base, "sleep", "infinity"])
        report(f"installing {' '.join(PACKAGES)} (about 30 s)")
        step = time.monotonic()
        run(["docker", "exec", "-i", builder, "sh", "-s"], input=INSTALL_SCRIPT, timeout=BUILD_TIMEOUT_S)
        report(f"installed in {time.monotonic() - step:.0f} s; committing")
        label = f'LABEL org.opencontainers.image.description="compose-agent test engine ({tag})"'
        run(["docker", "commit", "-c", label, "-c", 'CMD ["sleep", "infinity"]', builder, tag], what="docker commit")
    finally:
        subprocess.run(["docker", "rm", "-f", builder], capture_output=True, check=False)
        if base == f"{tag}-base":
            # Untags only: the committed image keeps the imported layer as its parent.
            subprocess.run(["docker", "rmi", base], capture_output=True, check=False)
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    report(f"built {tag} in {time.monotonic() - started:.0f} s")
