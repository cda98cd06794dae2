"""Argument completion: stack names for ``project``, the stack's services for ``service``."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_types import PromptReference, ResourceTemplateReference

from gateway.mcp.resources import COMPOSE_FILE_TEMPLATE, LOGS_TEMPLATE, STATUS_TEMPLATE
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory, random_name

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TWO_SERVICES = "services:\n  web:\n    image: {image}\n  worker:\n    image: {image}\n"


def prompt(name: str) -> PromptReference:
    return PromptReference(type="ref/prompt", name=name)


def template(uri: str) -> ResourceTemplateReference:
    return ResourceTemplateReference(type="ref/resource", uri=uri)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize(
    "ref",
    [prompt("diagnose_stack"), prompt("triage_service"), template(COMPOSE_FILE_TEMPLATE), template(STATUS_TEMPLATE)],
    ids=["diagnose_stack", "triage_service", "compose-file", "status"],
)
async def test_stack_names_complete_for_the_project_argument(
    ops: ComposeOperations, stacks: StackFactory, ref: PromptReference | ResourceTemplateReference, mode: str
) -> None:
    prefix = random_name("c")
    first, second = stacks.make(TWO_SERVICES, name=prefix + "a"), stacks.make(TWO_SERVICES, name=prefix + "b")
    async with Client(build_server(ops), mode=mode) as client:
        answer = (await client.complete(ref, {"name": "project", "value": prefix})).completion
        everything = (await client.complete(ref, {"name": "project", "value": ""})).completion
    assert answer.values == [first, second] and answer.total == 2 and not answer.has_more
    assert {first, second} <= set(everything.values)


@pytest.mark.parametrize("ref", [prompt("triage_service"), template(LOGS_TEMPLATE)], ids=["prompt", "logs"])
async def test_given_a_project_service_names_complete(
    ops: ComposeOperations, stacks: StackFactory, ref: PromptReference | ResourceTemplateReference
) -> None:
    project = stacks.make(TWO_SERVICES)
    async with Client(build_server(ops)) as client:
        services = await client.complete(ref, {"name": "service", "value": ""}, {"project": project})
        narrowed = await client.complete(ref, {"name": "service", "value": "wo"}, {"project": project})
        without_project = await client.complete(ref, {"name": "service", "value": ""})
        bad_project = await client.complete(ref, {"name": "service", "value": ""}, {"project": "../x"})
    # From the compose model: the services complete before any container exists.
    assert services.completion.values == ["web", "worker"]
    assert narrowed.completion.values == ["worker"]
    assert without_project.completion.values == [] and bad_project.completion.values == []


async def test_other_references_complete_to_nothing(ops: ComposeOperations, stacks: StackFactory) -> None:
    stacks.make(TWO_SERVICES)
    async with Client(build_server(ops)) as client:
        unknown_prompt = await client.complete(prompt("test_prompt_with_arguments"), {"name": "arg1", "value": ""})
        unknown_template = await client.complete(template("file:///{path}"), {"name": "path", "value": ""})
        unknown_argument = await client.complete(prompt("diagnose_stack"), {"name": "path", "value": ""})
    for answer in (unknown_prompt, unknown_template, unknown_argument):
        assert answer.completion.values == []
