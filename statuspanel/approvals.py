"""Changes that wait for a person: the list with each plan, one approval's page, and the decisions.

Pages: ``/approvals`` (pending ones first, then those decided in the last day), ``/approvals/{id}``
(the page an ``approval_required`` result links to) and ``/ui/approvals`` (the list's live part).
API: ``GET /api/v1/approvals``, ``GET /api/v1/approvals/{id}``,
``POST /api/v1/approvals/{id}/approve`` (or ``/reject``), and ``POST /api/v1/approvals/{id}/run``: the
person who asked for a change from the panel sends it again, once someone else approved it.

Only a person decides, logged in with their own name and password as one of the gateway's people:
the panel's token (as a bearer or through the login form), a configured username and open mode name
nobody, so their decisions are refused here. The gateway then checks that the person holds
``compose:approve`` for the stack and is not the one who asked.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api import STATUS_PANEL, ActionResult, ApprovalInfo, DeployResult, InvalidInput, check_approval_id

from .backend import ActionCall, RollbackCall
from .errors import BadRequest, Forbidden, NotFound, PanelError
from .pages import pending_approvals, render
from .routes import api
from .state import ACTIONS, one_of_the_people, panel, person

__all__ = ["routes", "approval_view"]

_STATUS_TONE = {
    "pending": "warn",
    "approved": "ok",
    "used": "muted",
    "rejected": "bad",
    "void": "bad",
    "expired": "muted",
}
_NOBODY = (
    "only a person approves: log in with your own name and password (one of the people the operator added "
    "with compose-agent users), not with the panel's token"
)


def _valid_id(raw: str) -> str:
    try:
        return check_approval_id(raw)
    except InvalidInput as exc:
        raise BadRequest(str(exc)) from None


def _may_approve(request: Request, person: str | None, approval: ApprovalInfo) -> bool:
    """Whether ``person`` holds compose:approve for the approval's stack, as the panel's copy of the people says.

    Only for showing the buttons: the gateway decides, with its own copy.
    """
    people = panel(request).authenticator.people
    scopes = people.scopes_of(person) if people is not None and person is not None else None
    return scopes is not None and scopes.allows("approve", approval.project, approval.host)


def _asked_here(approval: ApprovalInfo, who: str | None) -> bool:
    """Whether ``who`` asked for it through this panel: only then may the panel send it again for them."""
    return who is not None and approval.caller == STATUS_PANEL.name and approval.on_behalf_of == who


def approval_view(request: Request, approval: ApprovalInfo, person: str | None) -> dict[str, Any]:
    """What the templates show of one approval, and whether ``person`` may press its buttons (and if not, why)."""
    own = person is not None and approval.on_behalf_of == person
    why_not = None
    if person is None:
        why_not = "Log in as one of the people (your own name and password) to decide."
    elif own:
        why_not = "You asked for this change: another person decides it."
    elif not _may_approve(request, person, approval):
        why_not = f"You do not hold compose:approve for {approval.project}."
    return {
        "id": approval.id,
        "status": approval.status,
        "tone": _STATUS_TONE.get(approval.status, "muted"),
        "tool": approval.tool,
        "project": approval.project,
        "arguments": {k: v for k, v in approval.arguments.items() if k != "project" and v not in (None, False)},
        "asked_by": approval.on_behalf_of or approval.caller,
        "caller": approval.caller,
        "plan": approval.plan,
        "requested_at": approval.requested_at,
        "expires_at": approval.expires_at,
        "decided_by": approval.decided_by,
        "decided_at": approval.decided_at,
        "used_at": approval.used_at,
        "note": approval.note,
        "pending": approval.status == "pending",
        "own": own,
        "can_decide": approval.status == "pending" and why_not is None,
        # The person who asked, from this panel, sends it once it is approved (a deploy is an agent's).
        "can_run": approval.status == "approved" and approval.tool != "deploy" and _asked_here(approval, person),
        "why_not": why_not if approval.status == "pending" else None,
    }


async def _list_context(request: Request) -> dict[str, Any]:
    state = panel(request)
    person = one_of_the_people(request)
    out: dict[str, Any] = {"approvals": [], "error": None, "person": person, "pending_approvals": 0}
    try:
        listing = await state.backend.approvals()
    except PanelError as exc:
        out["error"] = exc.message
        return out
    # Pending first (oldest first: the longest waiting), then the rest, newest first.
    pending = sorted((a for a in listing if a.status == "pending"), key=lambda a: a.requested_at)
    rest = [a for a in listing if a.status != "pending"]
    out["approvals"] = [approval_view(request, a, person) for a in [*pending, *rest]]
    out["pending_approvals"] = len(pending)
    out["legacy"] = state.backend.legacy
    return out


async def approvals_page(request: Request) -> Response:
    return render(request, "approvals.html", await _list_context(request))


async def _one_context(request: Request, raw_id: str) -> tuple[dict[str, Any], int]:
    """One approval's context, and the page's status (404 for none)."""
    person = one_of_the_people(request)
    context: dict[str, Any] = {"approval": None, "approvals": [], "error": None, "person": person}
    context["pending_approvals"] = await pending_approvals(panel(request))
    try:
        found = await panel(request).backend.approval(_valid_id(raw_id))
    except PanelError as exc:
        context["error"] = exc.message
        return context, exc.status_code
    context["approval"] = approval_view(request, found, person)
    context["approvals"] = [context["approval"]]
    return context, 200


async def approvals_fragment(request: Request) -> Response:
    """The list's live part; with ``?id=``, one approval's."""
    one = request.query_params.get("id")
    if one is not None:
        context, _ = await _one_context(request, one)
        return render(request, "_approvals.html", context)
    return render(request, "_approvals.html", await _list_context(request))


async def approval_page(request: Request) -> Response:
    """One approval: the page an approval_required result (and the panel's toast) links to."""
    context, status = await _one_context(request, request.path_params["approval"])
    return render(request, "approval.html", context, status_code=status)


@api
async def list_approvals(request: Request) -> Response:
    listing = await panel(request).backend.approvals()
    return JSONResponse({"approvals": [a.model_dump(mode="json") for a in listing]})


@api
async def get_approval(request: Request) -> Response:
    found = await panel(request).backend.approval(_valid_id(request.path_params["approval"]))
    return JSONResponse(found.model_dump(mode="json"))


@api
async def decide_approval(request: Request) -> Response:
    """Approve or reject, as the person logged in; the gateway checks their scope and that they did not ask."""
    approval_id = _valid_id(request.path_params["approval"])
    decision = request.path_params["decision"]
    if decision not in ("approve", "reject"):
        raise NotFound(f"unknown decision {decision[:20]!r}; use approve or reject")
    person = one_of_the_people(request)
    if person is None:
        raise Forbidden(_NOBODY)
    decided = await panel(request).backend.decide(approval_id, approve=decision == "approve", on_behalf_of=person)
    return JSONResponse(decided.model_dump(mode="json"))


@api
async def run_approved(request: Request) -> Response:
    """Send an approved change again, for the person who asked for it here: it acts once."""
    approval_id = _valid_id(request.path_params["approval"])
    who = person(request)
    found = await panel(request).backend.approval(approval_id)
    if not _asked_here(found, who):
        raise Forbidden(
            "only the person who asked for this change in the panel sends it again; an agent retries itself"
        )
    result: ActionResult | DeployResult
    arguments = found.arguments
    if found.tool in ACTIONS:
        services = arguments.get("services")
        call = ActionCall(
            found.project,
            found.tool,
            services=list(services) if isinstance(services, list) else None,
            volumes=arguments.get("volumes") is True,
            on_behalf_of=who,
            approval=approval_id,
        )
        result = await panel(request).backend.action(call)
    elif found.tool == "rollback":
        version = arguments.get("version")
        rollback = RollbackCall(
            found.project, version if isinstance(version, int) else None, on_behalf_of=who, approval=approval_id
        )
        result = await panel(request).backend.rollback(rollback)
    else:
        raise BadRequest(f"{found.tool} is sent by the agent that asked for it, not from the panel")
    return JSONResponse(result.model_dump(mode="json"))


def routes() -> list[BaseRoute]:
    return [
        Route("/approvals", approvals_page),
        Route("/ui/approvals", approvals_fragment),
        Route("/approvals/{approval}", approval_page),
        Route("/api/v1/approvals", list_approvals),
        Route("/api/v1/approvals/{approval}", get_approval),
        Route("/api/v1/approvals/{approval}/run", run_approved, methods=["POST"]),
        Route("/api/v1/approvals/{approval}/{decision}", decide_approval, methods=["POST"]),
    ]
