"""Approvals at the MCP edge: a listed call waits, a person approves or rejects it, the retry acts once.

The store and its rules are :mod:`gateway.approvals`; this module decides who is asking:

- A write tool listed in ``policy.approve`` (for its stack) changes nothing on its first call: its
  plan resolver plans it (:mod:`gateway.mcp.confirmation`), and :meth:`ApprovalGate.settle` files a
  pending approval and answers ``approval_required`` with the id, the plan and where a person
  approves it. No elicitation is sent: a client's answer is never an approval. The same call with
  ``approval="<id>"`` acts once, once a person approved it.
- ``approve`` and ``reject`` (``{"id"}``) are a person's: an OAuth token's own person holding
  ``compose:approve`` for the stack, or the status panel acting for one of the people who holds it.
  A static token (the agent's, or the panel's naming nobody) and stdio's local user are not people.
  The store refuses the person who asked, through whichever client.
- ``compose://approvals`` lists the approvals a caller may see, and ``compose://approvals/{id}`` is
  one; the pending ones are listed as resources, and hosts hear when one changes, in this process
  or another one sharing the state folder (:meth:`ApprovalGate.watch_forever`).

The tools and resources themselves are registered by :mod:`gateway.mcp.approval_tools`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from anyio import to_thread
from mcp.server.mcpserver import Context
from pydantic import Field

from ..approvals.records import APPROVAL_ID_PATTERN, Approval, ApprovalInfo, Approver, Request, check_approval_id
from ..approvals.store import ApprovalStore
from ..audit import approval_step, bounded_arguments, mark_approval
from ..auth.principals import STATUS_PANEL, Principal
from ..auth.scopes import ScopeSet, needed_scope
from ..deploy.confirm import call_digest
from ..errors import ApprovalRequired, GatewayError, InsufficientScope, InvalidInput, PolicyViolation
from ..policy.rules import Policy
from .access import PersonScopes, acting_for, principal_of
from .confirmation import audit_view

if TYPE_CHECKING:
    from ..config import Settings
    from ..operations import ComposeOperations
    from .confirmation import Pending
    from .notify import Notifier

__all__ = [
    "APPROVAL_DESCRIPTION",
    "APPROVALS_URI",
    "APPROVAL_TEMPLATE",
    "ApprovalArg",
    "ApprovalGate",
    "approval_gate",
    "approval_uri",
    "is_approval_uri",
]

logger = logging.getLogger(__name__)

APPROVALS_URI = "compose://approvals"
APPROVAL_TEMPLATE = "compose://approvals/{id}"
APPROVAL_DESCRIPTION = (
    'The id from an approval_required result (approval="..."), once a person approved it, when the operator\'s '
    "policy asks for this tool to be approved; omit it on the first call"
)
# How often another process's changes (and expiries) are looked for: one stat a second.
WATCH_INTERVAL = 1.0

ApprovalArg = Annotated[str | None, Field(description=APPROVAL_DESCRIPTION, pattern=APPROVAL_ID_PATTERN)]
Audit = Callable[[str], None]


def approval_uri(approval_id: str) -> str:
    return f"{APPROVALS_URI}/{approval_id}"


def is_approval_uri(uri: str) -> bool:
    """Whether ``uri`` is the approvals list or one approval with a well-formed id."""
    if uri == APPROVALS_URI:
        return True
    prefix = APPROVALS_URI + "/"
    if not uri.startswith(prefix):
        return False
    try:
        check_approval_id(uri[len(prefix) :])
    except InvalidInput:
        return False
    return True


@dataclass(frozen=True)
class _Seen:
    """What hosts were last told about: each approval's status, and which ones were listed."""

    statuses: dict[str, str]
    listed: frozenset[str]


class ApprovalGate:
    """One server's approvals: which calls wait, the store, where people approve, and who hears of changes."""

    def __init__(
        self, store: ApprovalStore | None = None, policy: Policy | None = None, *, panel_url: str | None = None
    ) -> None:
        self.store = store or ApprovalStore()
        self.policy = policy or Policy()
        self.panel_url = panel_url.rstrip("/") if panel_url else None
        self.notifier: Notifier | None = None
        self._seen: _Seen | None = None
        self._lock = anyio.Lock()
        self._cache: tuple[str, list[Approval]] | None = None

    def required(self, tool: str, project: str) -> bool:
        return self.policy.needs_approval(tool, project)

    def url(self, approval_id: str) -> str | None:
        """The status panel's page for the approval, when the operator said where the panel is."""
        return f"{self.panel_url}/approvals/{approval_id}" if self.panel_url else None

    def _where(self, approval_id: str) -> str:
        url = self.url(approval_id)
        panel = f"in the status panel at {url}" if url else "in the status panel, under Approvals"
        return (
            f"A person other than you approves it {panel}, or with the approve tool "
            f'({{"id": "{approval_id}"}}) using their own token that holds compose:approve'
        )

    # -- the write tools' half ----------------------------------------------------------------

    async def settle(
        self,
        tool: str,
        arguments: dict[str, Any],
        pending: Pending,
        approval: str | None,
        *,
        audit: Audit,
    ) -> None:
        """Return to act (the approval is spent); raise to change nothing.

        Raises:
            ApprovalRequired: no approval given (a new or waiting one's id), or it still waits.
            PolicyViolation: an approval that does not cover this call (audited as refused).
        """
        project = str(arguments["project"])
        call = call_digest(tool, arguments)
        host = arguments.get("host")
        if approval is None:
            request = Request(
                tool=tool,
                project=project,
                # What the person sees of the call: a compose file by hash, env by names (never values).
                arguments=bounded_arguments(audit_view(arguments)),
                call=call,
                caller=pending.caller,
                on_behalf_of=pending.person,
                state=pending.state,
                plan=pending.plan,
                host=host if isinstance(host, str) else None,
            )
            try:
                kept, created = await to_thread.run_sync(self.store.request, request)
            except GatewayError as exc:
                audit(str(exc))
                raise
            with approval_step(kept.id, "requested" if created else "waiting"):
                audit(f"waits for a person's approval {kept.id}; nothing was changed")
            await self.changed()
            raise ApprovalRequired(self._required(kept, created), approval=kept.id, url=self.url(kept.id))
        try:
            await to_thread.run_sync(
                lambda: self.store.redeem(
                    approval,
                    tool=tool,
                    call=call,
                    caller=pending.caller,
                    on_behalf_of=pending.person,
                    state=pending.state,
                )
            )
        except ApprovalRequired:
            with approval_step(approval, "waiting"):
                audit(f"approval {approval} still waits for a person; nothing was changed")
            message = (
                f"approval {approval} still waits for a person; nothing was changed.\n{self._where(approval)}. "
                "Once it is approved, repeat this call."
            )
            raise ApprovalRequired(message, approval=approval, url=self.url(approval)) from None
        except PolicyViolation as exc:
            with approval_step(approval, "refused"):
                audit(str(exc))
            await self.changed()  # a void one changed
            raise
        # Every line of the call from here on (its intent and outcome) belongs to the approval.
        mark_approval(approval, "executed")
        await self.changed()

    def _required(self, kept: Approval, created: bool) -> str:
        minutes = f"{self.store.ttl / 60:g}"
        lead = (
            f"{kept.tool} on '{kept.project}' waits for a person's approval (the operator's policy.approve lists "
            f"'{kept.tool}'); nothing was changed."
        )
        if not created:
            lead += f" The same call already waits as approval {kept.id}."
        return (
            f"{lead}\n{kept.plan}\n"
            f"Approval id: {kept.id}. {self._where(kept.id)}. Once approved, repeat the same call with "
            f'approval="{kept.id}". It acts once, only for this caller and only while the stack stays as '
            f"planned; a request waits {minutes} minutes for a person, and an approval counts as long again."
        )

    # -- approve and reject --------------------------------------------------------------------

    async def decide(
        self, ops: ComposeOperations, ctx: Context, people: PersonScopes | None, approval_id: str, *, approve: bool
    ) -> ApprovalInfo:
        """A person's decision on a pending approval; audited ahead, as every change is.

        Raises:
            PolicyViolation: the caller is no person, the person asked for it, or it is not pending.
            InsufficientScope: the person does not hold compose:approve for its stack.
            InvalidInput: a malformed id or ``on_behalf_of``.
        """
        tool = "approve" if approve else "reject"
        principal = principal_of(ctx)
        arguments: dict[str, Any] = {"id": approval_id}
        person: str | None = principal.person
        try:
            person = acting_for(principal, ctx.request_context.meta)  # named in the refusal's line, if any
            approver, scopes = _approver(principal, person, people)
            check_approval_id(approval_id)
            kept = await to_thread.run_sync(self.store.get, approval_id)
            if kept is None:
                raise PolicyViolation(f"there is no approval {approval_id} (it may have ended more than a day ago)")
            arguments.update(tool=kept.tool, project=kept.project)
            _check_scope(scopes, kept)
            # Checked again under the store's lock; here, so that a plain refusal leaves one line.
            refusal = kept.refusal_for(Approver(approver, principal.name))
            if refusal is not None:
                raise PolicyViolation(refusal)
        except GatewayError as exc:
            with _step_if_known(approval_id, "refused"):
                ops.audit_refusal(tool, arguments, principal.name, str(exc), on_behalf_of=person)
            raise
        with approval_step(approval_id, "approved" if approve else "rejected"):
            intent = await ops.lifecycle.write_intent(tool, arguments, principal.name, approver)
            try:
                decided = await to_thread.run_sync(
                    lambda: self.store.decide(
                        approval_id,
                        approve=approve,
                        by=Approver(approver, principal.name),
                        check=lambda current: _check_scope(scopes, current),
                    )
                )
            except GatewayError as exc:
                await ops.lifecycle.write_outcome(intent, "refused", str(exc))
                raise
            await ops.lifecycle.write_outcome(intent, "ok", None)
        await self.changed()
        return decided.info(self.url(approval_id))

    # -- what a caller may see -----------------------------------------------------------------

    async def _current(self) -> list[Approval]:
        """Every approval as it stands now, read again only when the store changed."""
        stamp = await to_thread.run_sync(self.store.stamp)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, await to_thread.run_sync(self.store.all))
        now = self.store.clock()
        return [a.effective(now) for a in self._cache[1]]

    async def visible(self, principal: Principal) -> list[ApprovalInfo]:
        """The approvals ``principal`` may see, newest first."""
        shown = [a for a in await self._current() if _may_see(principal, a)]
        return [a.info(self.url(a.id)) for a in sorted(shown, key=lambda a: a.requested_at, reverse=True)]

    async def one(self, principal: Principal, approval_id: str) -> ApprovalInfo | None:
        found = next((a for a in await self._current() if a.id == approval_id), None)
        return found.info(self.url(found.id)) if found is not None and _may_see(principal, found) else None

    # -- telling hosts -------------------------------------------------------------------------

    async def changed(self) -> None:
        """Tell hosts about every approval whose status changed since the last look (best effort)."""
        notifier = self.notifier
        try:
            current = await self._current()
        except GatewayError as exc:
            logger.warning("cannot read the approvals: %s", exc)
            return
        async with self._lock:
            seen = _Seen({a.id: a.status for a in current}, frozenset(a.id for a in current if a.status == "pending"))
            before, self._seen = self._seen, seen
        if notifier is None or before is None:
            return
        moved = [i for i, status in seen.statuses.items() if before.statuses.get(i) != status]
        for approval_id in moved:
            await notifier.updated(approval_uri(approval_id))
        if moved or set(before.statuses) != set(seen.statuses):
            await notifier.updated(APPROVALS_URI)
        if seen.listed != before.listed:
            await notifier.list_changed()

    async def watch_forever(self) -> None:
        """Follow the store until cancelled: another process's approvals, and expiries; never raises."""
        failing = False
        while True:
            try:
                await self.changed()
                failing = False
            except Exception as exc:  # noqa: BLE001 - a bad file or folder must not take the server down
                if not failing:
                    logger.warning("cannot follow the approvals in %s: %r", self.store.description, exc)
                failing = True
            await anyio.sleep(WATCH_INTERVAL)


def _approver(principal: Principal, person: str | None, people: PersonScopes | None) -> tuple[str, ScopeSet]:
    """The person deciding and what they hold, if the caller is one of the people at all.

    Raises:
        PolicyViolation: a static token naming nobody (or nobody known), the agent's token, or stdio.
        InsufficientScope: a person without any compose:approve.
    """
    scopes: ScopeSet | None = None
    if principal.person is not None:
        scopes = principal.scopes
    elif principal.name == STATUS_PANEL.name and person is not None and people is not None:
        scopes = people(person)  # the panel vouches for the person logged in to it
    if scopes is None or person is None:
        raise PolicyViolation(
            f"approvals are a person's: '{principal.name}' names none of the people. A person approves with their "
            "own OAuth token holding compose:approve, or logged in to the status panel as themselves"
        )
    if "approve" not in scopes.tools():
        raise InsufficientScope(
            f"{person} does not hold compose:approve; the operator can grant it (compose-agent users grant)",
            scope=needed_scope("approve"),
        )
    return person, scopes


def _check_scope(scopes: ScopeSet, approval: Approval) -> None:
    if not scopes.allows("approve", approval.project, approval.host):
        needed = needed_scope("approve", approval.project, approval.host)
        raise InsufficientScope(f"deciding approvals for '{approval.project}' needs the scope {needed}", scope=needed)


def _may_see(principal: Principal, approval: Approval) -> bool:
    """Who reads it: whoever may see its stack or decide it, and the caller who asked."""
    if approval.asked_by(principal.name, principal.person):
        return True
    if principal.may_act("ps", approval.project, approval.host):
        return True
    return principal.scopes is not None and principal.scopes.allows("approve", approval.project, approval.host)


def _step_if_known(approval_id: str, step: str) -> AbstractContextManager[None]:
    """The approval step for a refusal's line, when the id given is one at all (anything else is not logged)."""
    try:
        check_approval_id(approval_id)
    except InvalidInput:
        return nullcontext()
    return approval_step(approval_id, step)


def approval_gate(settings: Settings) -> ApprovalGate:
    """The approvals of a served gateway: kept in its state folder, by the operator's policy."""
    store = ApprovalStore.in_state_dir(settings.state_dir, ttl=settings.policy.approval_ttl)
    return ApprovalGate(store, settings.policy, panel_url=settings.panel_url)
