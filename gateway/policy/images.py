"""Value constraints on images and builds: where an image comes from, what a build reads and what it tags.

A pull or a cache fetch is made by the engine from the host's own network namespace, so an image
on the host's loopback reaches services no container could; a build reads its context and files on
the host, and the names it tags replace whatever image had them. See ``docs/security.md``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Any

from .findings import At, Findings, entries, namespace_owner

__all__ = ["build", "image", "local_host", "own_image", "registry"]

# compose-go and BuildKit take these for remote (git, URL) build contexts.
_REMOTE_CONTEXT = re.compile(r"://|^git@|^github\.com/")


def _registry_host(reference: str) -> str | None:
    name = reference.split("@", 1)[0]
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if first.startswith("["):
            return first[1 : first.find("]")] if "]" in first else first
        host, colon, port = first.rpartition(":")
        return host if colon and port.isdigit() else first
    return None


def local_host(host: str) -> bool:
    """True for the host's own loopback, link-local, unspecified or multicast addresses, in any spelling."""
    name = host.lower().rstrip(".")
    if name in ("localhost", "ip6-localhost", "ip6-loopback") or name.endswith(".localhost"):
        return True
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        try:
            # 127.1, 0x7f000001 and 2130706433 are all 127.0.0.1 to the resolver.
            address = ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast


def registry(f: Findings, service: str | None, what: str, reference: str) -> None:
    """An image the engine pulls (or a cache it fetches): never from the host's own addresses."""
    host = _registry_host(f.clean(what, reference))
    if host is not None and local_host(host):
        f.add("registry", service, f"{what} {reference} comes from {host}, an address of the host itself")


def _repository(reference: str) -> str:
    name = reference.split("@", 1)[0]
    head, colon, tag = name.rpartition(":")
    return head if colon and "/" not in tag else name


def own_image(f: Findings, service: str | None, what: str, reference: str) -> None:
    """A name a build tags: only in the stack's namespace, so it never replaces another stack's (or a base) image."""
    registry(f, service, what, reference)
    owner = namespace_owner(_repository(reference), f.stack, f.others(), "-_/")
    if owner != f.stack:
        whose = f"{owner}'s namespace" if owner else "outside the stack's namespace"
        f.add("namespace", service, f"{what} {reference} is {whose}; built images are named {f.stack}-<name>")


def image(f: Findings, at: At, value: Any) -> None:
    if isinstance(value, str):
        registry(f, at.service, "image", value)


def build(f: Findings, at: At, spec: Any) -> None:
    """A build: its context and files inside the folder, its caches and images on allowed registries."""
    if not isinstance(spec, dict):
        return
    name = at.service
    context = str(spec.get("context") or "")
    # Compose makes a local context absolute; what it leaves relative is remote (git, https).
    if context and (_REMOTE_CONTEXT.search(context) or not os.path.isabs(context)):
        f.add("outside_files", name, f"build context {context} is remote: the builder fetches it")
    elif context:
        f.file(name, "build context", context)
        if spec.get("dockerfile") and not spec.get("dockerfile_inline"):
            f.file(name, "Dockerfile", os.path.join(context, str(spec["dockerfile"])))
    for key, source in entries(spec.get("additional_contexts") or {}):
        _additional_context(f, name, key, str(source))
    for key in ("cache_from", "cache_to"):
        for entry in spec.get(key) or []:
            _cache(f, name, key, str(entry))
    for entry in spec.get("ssh") or []:
        if isinstance(entry, dict):
            ident, path = str(entry.get("id") or "default"), str(entry.get("path") or "")
        else:
            ident, _, path = str(entry).partition("=")
        if path:
            f.file(name, "build ssh key", path)
        else:
            # Without a key file the build gets the agent at SSH_AUTH_SOCK, the keys of whoever runs Compose.
            f.add(
                "outside_files",
                name,
                f"build ssh {ident} hands the build the SSH agent of the gateway's environment; "
                "give the build a key file inside the folder as a build secret instead",
            )
    network = spec.get("network")
    if network == "host":
        f.add("host_namespaces", name, "build network host")
    elif network not in (None, "", "none", "default") and namespace_owner(str(network), f.stack, f.others()) != f.stack:
        f.add("external_networks", name, f"build network {network} is a network the stack did not create")
    for entitlement in spec.get("entitlements") or []:
        rule = "host_namespaces" if entitlement == "network.host" else "privileged"
        f.add(rule, name, f"build entitlement {entitlement}")
    for tag in spec.get("tags") or []:
        own_image(f, name, "build tag", str(tag))


def _additional_context(f: Findings, service: str | None, key: str, source: str) -> None:
    what = f"build additional context '{key}'"
    if source.startswith("docker-image://"):
        registry(f, service, what, source.removeprefix("docker-image://"))
    elif source.startswith("oci-layout://"):
        f.file(service, what, source.removeprefix("oci-layout://").partition("@")[0])
    elif source.startswith("service:"):
        return
    elif _REMOTE_CONTEXT.search(source):
        f.add("outside_files", service, f"{what} {source} is remote: the builder fetches it")
    else:
        f.file(service, what, source)


def _cache(f: Findings, service: str | None, key: str, entry: str) -> None:
    if "=" not in entry:
        registry(f, service, f"build {key}", entry)
        return
    options = dict(part.split("=", 1) for part in entry.split(",") if "=" in part)
    kind = options.get("type")
    if kind == "local":
        for option in ("src", "dest"):
            if options.get(option):
                f.file(service, f"build {key} {option}", options[option])
    elif kind == "registry":
        if options.get("ref"):
            registry(f, service, f"build {key}", options["ref"])
    elif kind != "inline":
        f.add("registry", service, f"build {key} type={kind} keeps the build cache in a remote service")
