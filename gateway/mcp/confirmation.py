"""Confirmation at the MCP edge: ask the person when the client can, hand out a token when it cannot.

A tool listed in ``policy.confirm`` gets two resolved parameters (the SDK's ``Resolve``), which run
before its body:

- a *plan resolver* (``plan_<tool>``) checks the caller's scope and describes what the call would
  do (:class:`Pending`: the plan text and the state it was planned against);
- an *asker* (:func:`asker_for`) turns that into an elicitation when the client declared the
  capability and the call carries no ``confirm`` token. The SDK sends it the way the negotiated
  protocol wants: mid-call before 2026-07-28, as an ``InputRequiredResult`` round trip after.

The body then calls :meth:`ConfirmGate.settle`: it acts on an accepted elicitation or a valid
token, and otherwise raises the plan with a fresh token (see :mod:`gateway.deploy.confirm`).

A call the operator's ``policy.approve`` lists for its stack waits for a person instead
(:mod:`gateway.mcp.approvals`): its resolver plans it the same way, nobody is asked, and the plan
goes into the approval. An approval shows the plan and binds the state as a confirmation does, so
a tool listed in both waits for the approval only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol, cast

from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.resolve import Elicit, Resolve
from pydantic import BaseModel, Field

from ..auth.principals import Principal
from ..deploy.confirm import Confirmations
from ..deploy.plan import render_down, render_plan
from ..deploy.versions import sha256_hex
from ..errors import GatewayError, PolicyViolation
from .access import PersonScopes, authorize
from .hosts import on_host

if TYPE_CHECKING:
    from ..deploy.planner import Planner
    from ..fleet import Fleet
    from ..operations import ComposeOperations
    from .approvals import ApprovalGate

__all__ = [
    "Approval",
    "Answer",
    "Pending",
    "ConfirmGate",
    "CONFIRM_DESCRIPTION",
    "asker_for",
    "deploy_audit_arguments",
    "audit_view",
    "UpPending",
    "UpAnswer",
    "DownPending",
    "DownAnswer",
    "DeployPending",
    "DeployAnswer",
    "RollbackPending",
    "RollbackAnswer",
    "SERVICE_CONFIRMATION",
]

CONFIRM_DESCRIPTION = (
    "The token from a previous call's confirmation request (confirm=\"...\"), when the operator's policy "
    "asks for this tool to be confirmed; omit it on the first call"
)


class Approval(BaseModel):
    """The one question a person answers in the confirmation prompt."""

    approve: bool = Field(description="Go ahead with this change")


# What the tool body receives from the asker: the person's answer, or an accepted None when nobody was asked.
Answer = ElicitationResult[Approval]


@dataclass(frozen=True)
class Pending:
    """A call as planned before its body runs, by a caller whose scope was checked for it.

    ``caller`` and ``person`` are read once, here: the body acts as them without asking again.
    """

    caller: str
    needed: bool
    plan: str = ""
    state: str = ""
    ask: bool = False
    person: str | None = None
    # The call waits for a person's approval (``plan`` and ``state`` are for it).
    approval: bool = False


def can_elicit(ctx: Context) -> bool:
    """True when the client declared form elicitation (a bare ``elicitation: {}`` counts, as the spec says)."""
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


def asker_for(resolver: Callable[..., Awaitable[Pending]]) -> Callable[[Pending], Elicit[Approval] | None]:
    """The resolver that asks the person about the plan ``resolver`` made, when it says to ask."""

    def ask(pending: Pending) -> Elicit[Approval] | None:
        if not pending.ask:
            return None
        # The state id is in the question, so an answer given to an older plan is not taken for this one.
        return Elicit(f"{pending.plan}\n\n(state {pending.state[:12]})\nApprove this change?", Approval)

    # Set as objects, not strings: the resolver is the caller's, out of reach of get_type_hints.
    ask.__annotations__ = {"pending": Annotated[Pending, Resolve(resolver)], "return": Elicit[Approval] | None}
    # A stable, distinct name: the SDK keys each resolver's question by it across round trips.
    ask.__name__ = ask.__qualname__ = f"ask_{resolver.__name__}"
    return ask


StateFn = Callable[[], Awaitable[str]]
PlanFn = Callable[[], Awaitable[str]]


class ConfirmGate:
    """The confirmations of one server, and the two halves of a confirmed call."""

    def __init__(self, confirmations: Confirmations) -> None:
        self.confirmations = confirmations

    async def pending(
        self,
        ctx: Context,
        who: Principal,
        tool: str,
        confirm: str | None,
        state: StateFn,
        plan: PlanFn,
        *,
        person: str | None = None,
    ) -> Pending:
        """The plan resolver's half: plan only for tools that need confirming, and only when it will be shown."""
        if not self.confirmations.required(tool):
            return Pending(caller=who.name, needed=False, person=person)
        ask = confirm is None and can_elicit(ctx)
        # With a token, the plan is not shown again; only the state it was issued for matters.
        text = await plan() if confirm is None else ""
        return Pending(caller=who.name, needed=True, plan=text, state=await state(), ask=ask, person=person)

    async def settle(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        pending: Pending,
        answer: Answer,
        confirm: str | None,
        state: StateFn,
        *,
        audit: Callable[[str], None],
    ) -> None:
        """The body's half: return to act; raise to change nothing.

        Raises:
            ConfirmationRequired: no token and nobody asked; carries the plan and a new token.
            PolicyViolation: a token that does not fit, a person who declined, or a state that
                changed while the person was asked.
        """
        if not pending.needed:
            return
        project = arguments.get("project")
        if confirm is not None:
            try:
                self.confirmations.redeem(confirm, tool, arguments, caller=pending.caller, state=pending.state)
            except PolicyViolation as exc:
                audit(str(exc))
                raise
            return
        if pending.ask:
            approved = isinstance(answer, AcceptedElicitation) and answer.data is not None and answer.data.approve
            if not approved:
                reason = f"{tool} on '{project}' was not approved; nothing was changed"
            elif await state() != pending.state:
                reason = f"'{project}' changed while the person was asked; nothing was changed; call again"
            else:
                return
            audit(reason)
            raise PolicyViolation(reason)
        required = self.confirmations.issue(
            tool, arguments, caller=pending.caller, state=pending.state, plan=pending.plan
        )
        # The token stays out of the audit line: it is as good as the confirmation itself.
        audit("needs confirmation: the plan and a token were handed out")
        raise required


# -- the plan resolvers: one per confirmable tool, module-level so their wire keys are stable ---


class _Kit(Protocol):
    """What the plan resolvers need of the server's tool kit (:class:`gateway.mcp.tools.ToolKit`)."""

    ops: ComposeOperations
    fleet: Fleet  # the call's host is resolved here, once
    gate: ConfirmGate
    people: PersonScopes | None  # the panel's person acts within their own grants
    approvals: ApprovalGate


def _kit(ctx: Context) -> _Kit:
    kit = getattr(ctx.mcp_server, "kit", None)
    if kit is None:  # pragma: no cover - build_server always sets it
        raise RuntimeError("the server has no tool kit")
    return cast(_Kit, kit)


async def _plan_call(
    ctx: Context,
    tool: str,
    arguments: dict[str, Any],
    confirm: str | None,
    plan: Callable[[Planner], Awaitable[str]],
    audit_arguments: dict[str, Any] | None = None,
    approval: str | None = None,
) -> Pending:
    kit = _kit(ctx)
    shown = audit_arguments if audit_arguments is not None else arguments
    # The one scope check of a write: the body acts as the caller this returns.
    who = authorize(kit.ops, ctx, tool, shown, people=kit.people)
    project = str(arguments["project"])
    try:
        # An unknown host, or a write on a read-only one, is refused before anything is planned.
        planner = kit.fleet.writable(arguments.get("host"), tool).planner
    except GatewayError as exc:
        kit.ops.audit_refusal(tool, shown, who.principal.name, str(exc), on_behalf_of=who.person)
        raise

    def state() -> Awaitable[str]:
        # What a confirmation and an approval are both bound to: every file the model is read from (a
        # deploy's or rollback's own model, for those), and the containers.
        return planner.state(project, tool, arguments)

    try:
        if kit.approvals.required(tool, project):  # no question asked: the plan goes to a person
            text = await plan(planner) if approval is None else ""
            return Pending(who.principal.name, False, text, await state(), person=who.person, approval=True)
        return await kit.gate.pending(
            ctx,
            who.principal,
            tool,
            confirm,
            state=state,
            plan=lambda: plan(planner),
            person=who.person,
        )
    except GatewayError as exc:
        kit.ops.audit_refusal(tool, shown, who.principal.name, str(exc), on_behalf_of=who.person)
        raise


# Each resolver also takes the call's ``approval``: a retry that carries one is not planned again.


async def plan_up(
    project: str,
    services: list[str] | None,
    wait: bool,
    confirm: str | None,
    approval: str | None,
    host: str,
    ctx: Context,
) -> Pending:
    async def plan(planner: Planner) -> str:
        return render_plan(await planner.plan(project))

    arguments = on_host({"project": project, "services": services, "wait": wait}, host)
    return await _plan_call(ctx, "up", arguments, confirm, plan, approval=approval)


async def plan_down(
    project: str, volumes: bool, confirm: str | None, approval: str | None, host: str, ctx: Context
) -> Pending:
    async def plan(planner: Planner) -> str:
        return render_down(project, await planner.down_risk(project), volumes=volumes)

    arguments = on_host({"project": project, "volumes": volumes}, host)
    return await _plan_call(ctx, "down", arguments, confirm, plan, approval=approval)


def _service_resolver(action: str) -> Callable[..., Awaitable[Pending]]:
    async def resolve(
        project: str, services: list[str] | None, confirm: str | None, approval: str | None, host: str, ctx: Context
    ) -> Pending:
        async def plan(planner: Planner) -> str:
            return await planner.describe(project, action, services)

        arguments = on_host({"project": project, "services": services}, host)
        return await _plan_call(ctx, action, arguments, confirm, plan, approval=approval)

    resolve.__name__ = resolve.__qualname__ = f"plan_{action}"
    return resolve


async def plan_deploy(
    project: str,
    compose_yaml: str,
    env: dict[str, str] | None,
    wait: bool,
    confirm: str | None,
    approval: str | None,
    host: str,
    ctx: Context,
) -> Pending:
    async def plan(planner: Planner) -> str:
        return render_plan(await planner.plan(project, compose_yaml, env))

    arguments = on_host({"project": project, "compose_yaml": compose_yaml, "env": env, "wait": wait}, host)
    shown = on_host(deploy_audit_arguments(project, compose_yaml), host)
    return await _plan_call(ctx, "deploy", arguments, confirm, plan, shown, approval=approval)


async def plan_rollback(
    project: str, version: int | None, wait: bool, confirm: str | None, approval: str | None, host: str, ctx: Context
) -> Pending:
    async def plan(planner: Planner) -> str:
        return render_plan(await planner.rollback_plan(project, version))

    arguments = on_host({"project": project, "version": version, "wait": wait}, host)
    return await _plan_call(ctx, "rollback", arguments, confirm, plan, approval=approval)


def deploy_audit_arguments(project: str, compose_yaml: str) -> dict[str, Any]:
    """What an audit line says about a deploy call: never the file, never an env value."""
    return audit_view({"project": project, "compose_yaml": compose_yaml})


def audit_view(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A call's arguments as an audit line may show them: a compose file by its hash and size, env by its names.

    ``env`` values are often passwords, and a compose file may hold some too; neither is logged,
    also when the call is refused for its arguments' shape.
    """
    shown = {k: v for k, v in arguments.items() if k not in ("compose_yaml", "env", "confirm")}
    text = arguments.get("compose_yaml")
    if isinstance(text, str):
        data = text.encode("utf-8", "surrogatepass")
        shown.update(sha256=sha256_hex(data), bytes=len(data))
    env = arguments.get("env")
    if isinstance(env, Mapping):
        shown["env_names"] = sorted(str(name) for name in env)
    return shown


ask_up = asker_for(plan_up)
ask_down = asker_for(plan_down)
ask_deploy = asker_for(plan_deploy)
ask_rollback = asker_for(plan_rollback)
# The parameters a confirmable tool declares: the SDK fills them by running the resolvers.
UpPending = Annotated[Pending, Resolve(plan_up)]
UpAnswer = Annotated[Answer, Resolve(ask_up)]
DownPending = Annotated[Pending, Resolve(plan_down)]
DownAnswer = Annotated[Answer, Resolve(ask_down)]
DeployPending = Annotated[Pending, Resolve(plan_deploy)]
DeployAnswer = Annotated[Answer, Resolve(ask_deploy)]
RollbackPending = Annotated[Pending, Resolve(plan_rollback)]
RollbackAnswer = Annotated[Answer, Resolve(ask_rollback)]


def _resolved(resolver: Callable[..., Awaitable[Pending]]) -> dict[str, Any]:
    return {"pending": Annotated[Pending, Resolve(resolver)], "answer": Annotated[Answer, Resolve(asker_for(resolver))]}


# restart, start and stop are registered in a loop: their parameters' annotations are set per tool.
SERVICE_CONFIRMATION: dict[str, dict[str, Any]] = {
    action: _resolved(_service_resolver(action)) for action in ("restart", "start", "stop")
}
