"""A fleet: the gateway's own engine, the host ``local``, and the hosts ``config.json`` adds.

Each host has its own :class:`~gateway.operations.ComposeOperations` (engine, catalog, guard,
judged models, write locks); they share the audit log, the metrics and the policy. A tool names
its host (``local`` when it names none) and :meth:`Fleet.get` resolves it once, at the call's start.

A host that stops answering must cost the others nothing: :meth:`Fleet.list_stacks` asks every
host at once and waits for each at most :data:`LIST_BUDGET_S`; a host that failed or did not
answer is a line in the listing's ``hosts``, and its engine's breaker makes later calls to it fail
fast until it answers again (see :mod:`gateway.engine.breaker`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from .audit import AuditLog
from .config import Settings
from .errors import GatewayError, InvalidInput, PolicyViolation
from .hosts import LOCAL_HOST
from .metrics import CommandExecutionMetrics, ControlPlane
from .models import HostStatus, StackInfo, StackList
from .operations import ComposeOperations

__all__ = ["Fleet", "Host", "LIST_BUDGET_S", "LOCAL_HOST"]

logger = logging.getLogger(__name__)

# How long a fleet listing waits for any one host: a little under the breaker's first retry
# plus a round trip, and well inside an MCP client's patience.
LIST_BUDGET_S = 3.0


@dataclass(frozen=True)
class Host:
    """One host of the fleet: its name, its operations, and whether writes are refused on it."""

    name: str
    ops: ComposeOperations
    read_only: bool = False


class Fleet:
    """The hosts a gateway drives, by name; ``local`` first, always there.

    Raises:
        ValueError: no ``local`` host, or a name given twice.
    """

    def __init__(self, hosts: Iterable[Host], *, list_budget: float = LIST_BUDGET_S) -> None:
        self._hosts: dict[str, Host] = {}
        for host in hosts:
            if host.name in self._hosts:
                raise ValueError(f"the host {host.name!r} is given twice")
            self._hosts[host.name] = host
        if LOCAL_HOST not in self._hosts:
            raise ValueError("a fleet has the host 'local', the gateway's own engine")
        self.list_budget = list_budget

    @classmethod
    def single(cls, ops: ComposeOperations) -> Fleet:
        """A fleet of one: the gateway's own engine (what a gateway without ``hosts`` drives)."""
        return cls([Host(LOCAL_HOST, ops)])

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        local: ComposeOperations,
        *,
        plane: ControlPlane,
        metrics: CommandExecutionMetrics | None = None,
        audit: AuditLog | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Fleet:
        """``local`` and an operations object per host of ``settings.hosts``, sharing its audit and metrics.

        No engine is contacted here: a host that is down at start is degraded, not fatal.

        Raises:
            ConfigError: a host whose endpoint cannot be used (a TLS folder without ``ca.pem``, an
                ``ssh://`` host with no ssh client); the others are closed again.
        """
        hosts = [Host(LOCAL_HOST, local)]
        try:
            for name, config in settings.hosts.items():
                ops = ComposeOperations.from_settings(
                    settings,
                    plane=plane,
                    metrics=metrics or local.metrics,
                    audit=audit if audit is not None else local.audit,
                    environ=environ,
                    host=(name, config),
                )
                # One set of running commands: a shutdown waits for (then stops) every host's.
                ops.lifecycle.running = local.lifecycle.running
                hosts.append(Host(name, ops, read_only=config.read_only))
        except GatewayError:
            for host in hosts[1:]:
                host.ops.close()
            raise
        return cls(hosts)

    def __iter__(self) -> Iterator[Host]:
        return iter(self._hosts.values())

    def __len__(self) -> int:
        return len(self._hosts)

    @property
    def local(self) -> ComposeOperations:
        return self._hosts[LOCAL_HOST].ops

    @property
    def names(self) -> list[str]:
        return list(self._hosts)

    def host(self, name: str | None) -> Host:
        """The host ``name`` (``local`` for None).

        Raises:
            InvalidInput: no such host; the message names the known ones.
        """
        found = self._hosts.get(name or LOCAL_HOST)
        if found is None:
            shown = name if len(name or "") <= 63 else f"{(name or '')[:63]}..."
            raise InvalidInput(f"no host named {shown!r}; known hosts: {', '.join(self._hosts)}")
        return found

    def get(self, name: str | None) -> ComposeOperations:
        """The operations of host ``name`` (``local`` for None).

        Raises:
            InvalidInput: no such host; the message names the known ones.
        """
        return self.host(name).ops

    def writable(self, name: str | None, tool: str) -> ComposeOperations:
        """The operations of host ``name`` for ``tool``, a write.

        Raises:
            InvalidInput: no such host.
            PolicyViolation: the host is read-only (``read_only`` in ``config.json``).
        """
        host = self.host(name)
        if host.read_only:
            raise PolicyViolation(
                f"the host '{host.name}' is read-only (config.json hosts.{host.name}.read_only): '{tool}' "
                "is refused there; only the operator can change that"
            )
        return host.ops

    async def list_stacks(self, only: str | None = None) -> StackList:
        """Every host's stacks (or host ``only``'s), each with its host, asked side by side; and each host's state.

        A host that fails, or does not answer within :attr:`list_budget`, adds no stacks but a
        line in ``hosts`` that says why. The answer comes back within about the budget whatever
        the hosts do.

        Raises:
            InvalidInput: ``only`` is no host of the fleet.
        """
        hosts = list(self) if only is None else [self.host(only)]
        if len(self._hosts) == 1:
            # A gateway of one engine answers as it always did: its failure is the call's error.
            listing = await self.local.list_stacks()
            return StackList(stacks=listing.stacks, hosts=[HostStatus(name=LOCAL_HOST, state="up")])
        results: dict[str, list[StackInfo]] = {}
        states: dict[str, HostStatus] = {}

        async def one(host: Host) -> None:
            try:
                with anyio.fail_after(self.list_budget):
                    listing = await host.ops.list_stacks()
            except TimeoutError:
                states[host.name] = HostStatus(
                    name=host.name,
                    state="timeout",
                    error=f"the engine of host '{host.name}' did not answer within {self.list_budget:g} s",
                    read_only=host.read_only,
                )
                return
            except GatewayError as exc:
                logger.info("host %s was left out of a listing: %s", host.name, exc)
                states[host.name] = HostStatus(
                    name=host.name, state="degraded", error=str(exc), read_only=host.read_only
                )
                return
            except Exception as exc:  # noqa: BLE001 - one host's fault is its own line, never everyone's error
                logger.warning("host %s failed in a listing", host.name, exc_info=True)
                error = f"its listing failed ({type(exc).__name__})"
                states[host.name] = HostStatus(name=host.name, state="degraded", error=error, read_only=host.read_only)
                return
            results[host.name] = [stack.model_copy(update={"host": host.name}) for stack in listing.stacks]
            states[host.name] = HostStatus(name=host.name, state="up", read_only=host.read_only)

        async with anyio.create_task_group() as tg:
            for host in hosts:
                tg.start_soon(one, host)
        return StackList(
            stacks=[stack for name in self._hosts for stack in results.get(name, [])],
            hosts=[states[name] for name in self._hosts if name in states],
        )

    def states(self) -> dict[str, dict[str, Any]]:
        """The other hosts' engines as their own calls last found them (``up`` or ``degraded``); asks nothing."""
        return {host.name: host.ops.engine.state.as_dict() for host in self if host.name != LOCAL_HOST}

    def close(self) -> None:
        for host in self:
            host.ops.close()
