"""Approvals a person gives: a change listed in ``policy.approve`` waits until someone else approves exactly it.

A confirmation (:mod:`gateway.deploy.confirm`) stops a change from happening unseen, but the caller
can satisfy it alone. An approval cannot be given by the caller that asked for it:

1. The call of a listed tool changes nothing. It leaves a *pending* approval here, bound to the tool,
   a digest of its exact arguments, the caller (token identity and the person behind it) and the
   state of the stack it was planned against, and the caller gets the approval's id and the plan.
2. A person decides: *approved* or *rejected*. Who may decide is the MCP edge's business
   (:mod:`gateway.mcp.approvals`: a person holding ``compose:approve`` for the stack); this store
   refuses, whatever it is told, a decision by the person who asked.
3. The caller repeats the call with the id. It acts if the approval was given for exactly this call
   by this caller, is unexpired, unused, and the stack is still as planned; the approval is *used*
   then, so it acts once. A stack that changed makes it *void*.

A request waits :attr:`~.store.ApprovalStore.ttl` seconds for a person (then *expired*); a given approval
counts for as long again from the moment it was given.

What an approval is: :mod:`.records`; where they are kept: :mod:`.store`. No MCP here: the edge
is :mod:`gateway.mcp.approvals`.
"""
