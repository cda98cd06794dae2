"""The approve and reject tools, and the approvals as resources (the gate behind them: :mod:`.approvals`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import ToolAnnotations
from mcp_types import INVALID_PARAMS, Resource
from pydantic import Field

from ..approvals.records import ApprovalInfo
from ..auth.principals import Principal
from .access import current_principal
from .approvals import APPROVAL_TEMPLATE, APPROVALS_URI, ApprovalGate, approval_uri, is_approval_uri

if TYPE_CHECKING:
    from .tools import ToolKit

__all__ = ["register_approvals", "pending_resources"]

ApprovalId = Annotated[
    str, Field(description="The approval's id, from the approval_required result or the approvals resource")
]
_DECIDE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)


def register_approvals(mcp: MCPServer, kit: ToolKit, *, tools: bool = True) -> None:
    """The approvals as resources, and (with ``tools``) the approve and reject tools."""
    gate = kit.approvals
    register_approval_resources(mcp, gate)
    if not tools:
        return

    @mcp.tool(
        title="Approve a change",
        annotations=_DECIDE,
        description=(
            "Approve a change that waits for a person (an approval_required result gave its id): the caller that "
            "asked may then repeat its call once. Only a person may approve, with their own token holding "
            "compose:approve for the stack, and never the person who asked. Returns the approval."
        ),
    )
    async def approve(id: ApprovalId, ctx: Context) -> ApprovalInfo:
        return await gate.decide(kit.ops, ctx, kit.people, id, approve=True)

    @mcp.tool(
        title="Reject a change",
        annotations=_DECIDE,
        description=(
            "Reject a change that waits for a person: its caller's retry is refused. Needs the same as approve: "
            "a person's own token holding compose:approve for the stack."
        ),
    )
    async def reject(id: ApprovalId, ctx: Context) -> ApprovalInfo:
        return await gate.decide(kit.ops, ctx, kit.people, id, approve=False)


def register_approval_resources(mcp: MCPServer, gate: ApprovalGate) -> None:
    """``compose://approvals`` and ``compose://approvals/{id}``, each filtered to what the caller may see."""

    @mcp.resource(
        APPROVALS_URI,
        name="approvals",
        title="Approvals",
        description=(
            "Changes that waited for a person, newest first, as JSON: pending ones with their plan, and those "
            "approved, rejected, used, void or expired in the last day. Only stacks the caller may see."
        ),
        mime_type="application/json",
    )
    async def approvals() -> str:
        listing = await gate.visible(current_principal())
        return json.dumps({"approvals": [a.model_dump(mode="json") for a in listing]}, indent=2)

    @mcp.resource(
        APPROVAL_TEMPLATE,
        name="approval",
        title="Approval",
        description="One change that waits (or waited) for a person, as JSON: its plan, status and who decided it.",
        mime_type="application/json",
    )
    async def approval(id: str) -> str:
        found = None
        if is_approval_uri(approval_uri(id)):
            found = await gate.one(current_principal(), id)
        if found is None:
            raise MCPError(code=INVALID_PARAMS, message=f"there is no approval at {approval_uri(id)[:100]!r}")
        return json.dumps(found.model_dump(mode="json"), indent=2)


async def pending_resources(gate: ApprovalGate, principal: Principal) -> list[Resource]:
    """The pending approvals ``principal`` may see, as resources for ``resources/list``."""
    return [
        Resource(
            uri=approval_uri(a.id),
            name=f"approval/{a.id}",
            title=f"{a.tool} on {a.project} waits for approval",
            description=f"{a.tool} on '{a.project}', asked by {a.on_behalf_of or a.caller}: waits for a person",
            mime_type="application/json",
        )
        for a in await gate.visible(principal)
        if a.status == "pending"
    ]
