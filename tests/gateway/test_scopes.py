"""Scopes: the grammar, what each allows, and what a token gets from what was asked and what is held."""

from __future__ import annotations

import pytest

from gateway.auth.principals import DEPLOY_TOOLS, READ_TOOLS, WRITE_TOOLS
from gateway.auth.scopes import Scope, ScopeError, ScopeSet, granted_scopes, needed_scope, parse_scope
from gateway.mcp.access import principal_from_access_token
from gateway.mcp.oauth.provider import GrantedAccess


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("compose:read", Scope("read")),
        ("compose:write:site", Scope("write", "site")),
        ("compose:deploy:edge/site", Scope("deploy", "site", "edge")),
        ("compose:approve:a_b-1", Scope("approve", "a_b-1")),
    ],
)
def test_scopes_parse_and_print_back_the_same(text: str, scope: Scope) -> None:
    assert parse_scope(text) == scope
    assert str(scope) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("compose:admin", "unknown verb 'admin'"),
        ("compose", "is not a scope"),
        ("docker:read", "is not a scope"),
        ("compose:write:Site", "is not a stack name"),
        ("compose:write:../etc", "is not a host name"),
        ("compose:write:edge/", "is not a stack name"),
        ("compose:write:Edge/site", "is not a host name"),
        ("compose:write:a:b", "is not a scope"),
        ("compose:read:" + "x" * 70, "is not a stack name"),
        ("", "is not a scope"),
    ],
)
def test_a_malformed_scope_is_refused_saying_what_a_scope_is(text: str, says: str) -> None:
    with pytest.raises(ScopeError, match=says) as raised:
        parse_scope(text)
    assert "compose:<verb>" in str(raised.value)


def test_write_and_deploy_imply_reading_what_they_cover_and_nothing_else() -> None:
    write_site = ScopeSet.parse(["compose:write:site"])
    assert all(write_site.allows(tool, "site") for tool in READ_TOOLS | WRITE_TOOLS)
    assert not any(write_site.allows(tool, "site") for tool in DEPLOY_TOOLS)
    assert not write_site.allows("ps", "other") and not write_site.allows("up", "other")
    deploy = ScopeSet.parse(["compose:deploy"])
    assert deploy.allows("deploy", "x") and deploy.allows("plan", "x") and not deploy.allows("up", "x")
    approve = ScopeSet.parse(["compose:approve"])
    assert approve.allows("approve", "x") and not approve.allows("ps", "x")
    # A tool that is none of ours is allowed by no scope.
    assert not ScopeSet.parse(["compose:write"]).allows("shell", "x")


def test_a_host_narrowed_scope_covers_that_hosts_stack_only() -> None:
    edge = ScopeSet.parse(["compose:write:edge/site"])
    assert edge.allows("up", "site", "edge")
    assert not edge.allows("up", "site")  # no host: the local one
    assert not edge.allows("up", "site", "lab")
    # A stack name alone is the local host's stack: a grant never reaches a namesake elsewhere.
    plain = ScopeSet.parse(["compose:write:site"])
    assert plain.allows("up", "site") and plain.allows("up", "site", "local")
    assert not plain.allows("up", "site", "edge") and not plain.allows("ps", "site", "edge")
    assert ScopeSet.parse(["compose:write:local/site"]) == plain
    # Only an unnarrowed scope covers every host.
    assert ScopeSet.parse(["compose:write"]).allows("up", "site", "edge")
    assert ScopeSet.parse(["compose:read"]).reaches_host("edge")
    assert plain.reaches_host("local") and not plain.reaches_host("edge")
    assert ScopeSet.parse(["compose:write:edge/site"]).reaches_host("edge")


def test_listing_is_allowed_by_any_read_and_then_filtered_by_stack() -> None:
    narrow = ScopeSet.parse(["compose:read:site"])
    assert narrow.allows("list_stacks")
    assert narrow.allows("ps", "site") and not narrow.allows("ps", "other")
    assert not ScopeSet.parse(["compose:approve"]).allows("list_stacks")


@pytest.mark.parametrize(
    ("asked", "held", "gets"),
    [
        (None, ["compose:read", "compose:write:site"], ["compose:read", "compose:write:site"]),
        (["compose:write"], ["compose:write:site"], ["compose:write:site"]),
        (["compose:read"], ["compose:write:site"], ["compose:read:site"]),
        (["compose:write"], ["compose:read"], ["compose:read"]),
        (["compose:write:site"], ["compose:write:edge/site"], []),
        (["compose:write"], ["compose:write:edge/site"], ["compose:write:edge/site"]),
        (["compose:read"], ["compose:write:edge/site"], ["compose:read:edge/site"]),
        (["compose:write:edge/site"], ["compose:write:edge/site", "compose:write:site"], ["compose:write:edge/site"]),
        (["compose:write:a"], ["compose:write:b"], ["compose:read:a"][:0]),
        (["compose:deploy", "compose:approve"], ["compose:read"], ["compose:read"]),
        (
            ["compose:read", "compose:write", "compose:deploy", "compose:approve"],
            ["compose:read", "compose:write:site"],
            ["compose:read", "compose:write:site"],
        ),
    ],
)
def test_a_token_gets_what_was_asked_that_the_person_holds(
    asked: list[str] | None, held: list[str], gets: list[str]
) -> None:
    assert granted_scopes(asked, ScopeSet.parse(held)).strings() == gets


def test_a_set_keeps_no_scope_another_one_includes() -> None:
    assert ScopeSet.parse(["compose:read:site", "compose:read", "compose:write:site"]).strings() == [
        "compose:read",
        "compose:write:site",
    ]
    # The same stack name on two hosts is two stacks: neither scope includes the other.
    assert ScopeSet.parse(["compose:write:edge/site", "compose:write:site"]).strings() == [
        "compose:write:site",
        "compose:write:edge/site",
    ]
    assert ScopeSet.parse(["compose:write:edge/site", "compose:write"]).strings() == ["compose:write"]


def test_a_refusal_names_the_narrowest_scope_that_would_allow_the_call() -> None:
    assert needed_scope("up", "site") == "compose:write:site"
    assert needed_scope("up", "site", "local") == "compose:write:site"
    assert needed_scope("deploy", "site", "edge") == "compose:deploy:edge/site"
    assert needed_scope("list_stacks") == "compose:read"


def test_an_oauth_token_is_a_principal_that_carries_its_person_and_scopes() -> None:
    access = GrantedAccess(
        token="t", client_id="c1", scopes=["compose:write:site"], subject="alice", resource="r", family="f"
    )
    principal = principal_from_access_token(access)
    assert principal.name == "oauth:c1" and principal.person == "alice"
    assert principal.may_call("up") and principal.may_call("ps") and not principal.may_call("deploy")
    assert principal.may_act("up", "site") and not principal.may_act("up", "other")
    # A token of no person whose client we never issued gets nothing, as before.
    stranger = principal_from_access_token(GrantedAccess(token="t", client_id="c2", scopes=["tool:up"], family="f"))
    assert stranger.tools == frozenset() and stranger.person is None
