"""The approvals store on its own: what an approval is bound to, who may decide it, and the file it lives in.

No engine here: the calls are described as the MCP edge describes them. The flows through real
servers and clients are in test_approvals.py and test_approvals_e2e.py.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.approvals.records import Approver, Request, check_approval_id
from gateway.approvals.store import MAX_PENDING, MAX_PENDING_PER_CALLER, ApprovalStore
from gateway.config import load_settings
from gateway.deploy.confirm import call_digest
from gateway.errors import ApprovalRequired, ConfigError, InvalidInput, PolicyViolation
from gateway.policy.rules import Policy

CALL = {"project": "shop", "volumes": False}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def request(
    *, caller: str = "compose_agent_token", person: str | None = None, state: str = "s1", **arguments: Any
) -> Request:
    call = {**CALL, **arguments}
    return Request(
        tool="down",
        project=str(call["project"]),
        arguments=call,
        call=call_digest("down", call),
        caller=caller,
        on_behalf_of=person,
        state=state,
        plan="What down does to 'shop':\n  - removes 1 container(s): shop-web-1",
    )


def redeem(store: ApprovalStore, approval_id: str, **overrides: Any) -> None:
    arguments = overrides.pop("arguments", CALL)
    spend: dict[str, Any] = {
        "tool": "down",
        "call": call_digest("down", arguments),
        "caller": "compose_agent_token",
        "on_behalf_of": None,
        "state": "s1",
    }
    store.redeem(approval_id, **{**spend, **overrides})


BOB = Approver("bob", "oauth:client-b")


def test_an_approved_call_acts_once_for_the_caller_call_and_state_it_was_asked_with() -> None:
    store = ApprovalStore()
    approval, created = store.request(request())
    assert created and approval.status == "pending" and check_approval_id(approval.id) == approval.id
    with pytest.raises(ApprovalRequired) as early:
        redeem(store, approval.id)  # nobody decided yet: nothing acts
    assert early.value.approval == approval.id
    decided = store.decide(approval.id, approve=True, by=BOB)
    assert (decided.status, decided.decided_by, decided.decided_via) == ("approved", "bob", "oauth:client-b")
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"caller": "status_panel_token"}, "no approval .* was asked for by this caller"),
        ({"on_behalf_of": "mallory"}, "no approval .* was asked for by this caller"),
        ({"arguments": {**CALL, "volumes": True}}, "was asked for another call"),
        ({"arguments": {**CALL, "project": "blog"}}, "was asked for another call"),
        ({"tool": "up"}, "was asked for another call"),
    ]
    for overrides, why in refusals:
        with pytest.raises(PolicyViolation, match=why):
            redeem(store, approval.id, **overrides)
    redeem(store, approval.id)  # the refusals above did not spend it
    with pytest.raises(PolicyViolation, match="already used at .*: an approval acts once"):
        redeem(store, approval.id)
    assert store.get(approval.id).status == "used"  # type: ignore[union-attr]


def test_a_stack_that_changed_since_the_plan_voids_the_approval() -> None:
    store = ApprovalStore()
    approval, _ = store.request(request(state="s1"))
    store.decide(approval.id, approve=True, by=BOB)
    with pytest.raises(PolicyViolation, match="changed since approval .* was asked for .* the approval is void"):
        redeem(store, approval.id, state="s2")
    with pytest.raises(PolicyViolation, match="is void"):
        redeem(store, approval.id, state="s1")  # changing it back does not bring it back
    assert store.get(approval.id).note == "the stack changed after it was planned"  # type: ignore[union-attr]


def test_nobody_decides_their_own_request_through_any_client() -> None:
    store = ApprovalStore()
    approval, _ = store.request(request(caller="oauth:client-a", person="alice"))
    for client in ("oauth:client-a", "oauth:client-b", "status_panel_token"):
        with pytest.raises(PolicyViolation, match="alice asked for this change"):
            store.decide(approval.id, approve=True, by=Approver("alice", client))
    with pytest.raises(PolicyViolation, match="alice asked for this change"):
        store.decide(approval.id, approve=False, by=Approver("alice", "oauth:client-b"))
    assert store.get(approval.id).status == "pending"  # type: ignore[union-attr]
    # Another person through the very client alice used may (a hosted app is shared by its users).
    assert store.decide(approval.id, approve=True, by=Approver("bob", "oauth:client-a")).status == "approved"


def test_a_decision_is_made_once_and_a_rejected_approval_never_acts() -> None:
    store = ApprovalStore()
    approval, _ = store.request(request())
    store.decide(approval.id, approve=False, by=BOB)
    with pytest.raises(PolicyViolation, match="was rejected by bob"):
        store.decide(approval.id, approve=True, by=Approver("carol", "status_panel_token"))
    with pytest.raises(PolicyViolation, match="was rejected by bob .*; nothing was changed"):
        redeem(store, approval.id)
    with pytest.raises(PolicyViolation, match="there is no approval"):
        store.decide("0" * 32, approve=True, by=BOB)
    with pytest.raises(InvalidInput, match="32 lowercase hexadecimal"):
        store.decide("../../etc/passwd", approve=True, by=BOB)


def test_a_check_that_refuses_changes_nothing() -> None:
    store = ApprovalStore()
    approval, _ = store.request(request())

    def refuse(_: object) -> None:
        raise PolicyViolation("not for this stack")

    with pytest.raises(PolicyViolation, match="not for this stack"):
        store.decide(approval.id, approve=True, by=BOB, check=refuse)
    assert store.get(approval.id).status == "pending"  # type: ignore[union-attr]


def test_a_request_waits_its_time_and_an_approval_counts_as_long_again_from_when_it_was_given() -> None:
    clock = Clock()
    store = ApprovalStore(ttl=600, clock=clock)
    late, _ = store.request(request())
    stale, _ = store.request(request(state="other"))
    clock.now += 599
    store.decide(late.id, approve=True, by=BOB)  # at the last second: it counts 600 s from now
    clock.now += 2
    assert store.get(stale.id).status == "expired"  # type: ignore[union-attr]
    with pytest.raises(PolicyViolation, match="expired at"):
        store.decide(stale.id, approve=True, by=BOB)
    clock.now += 597
    redeem(store, late.id)
    again, _ = store.request(request())
    store.decide(again.id, approve=True, by=BOB)
    clock.now += 600
    with pytest.raises(PolicyViolation, match=f"approval {again.id} expired at"):
        redeem(store, again.id)


def test_the_same_call_waits_on_one_approval_and_one_caller_cannot_crowd_out_the_others() -> None:
    store = ApprovalStore()
    first, created = store.request(request())
    same, again = store.request(request())
    assert created and not again and same.id == first.id
    for n in range(MAX_PENDING_PER_CALLER - 1):
        store.request(request(state=f"other-{n}"))
    with pytest.raises(PolicyViolation, match=f"{MAX_PENDING_PER_CALLER} approvals asked for by this caller"):
        store.request(request(state="one too many"))
    # Another caller is not held back by that one.
    assert store.request(request(caller="oauth:client-a", person="alice"))[1]
    # A static token may claim any person it likes: all the requests together are bounded too.
    for n in range(MAX_PENDING - MAX_PENDING_PER_CALLER - 1):
        store.request(request(person=f"claimed-{n}"))
    with pytest.raises(PolicyViolation, match=f"{MAX_PENDING} approvals already wait"):
        store.request(request(person="one-more"))


def test_approvals_survive_in_the_state_folder_privately_and_hold_no_secret(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"DB_PASSWORD": "hunter2-very-secret"}
    yaml = "services:\n  db:\n    image: postgres\n    environment:\n      PASSWORD: in-the-file-secret\n"
    real = {"project": "shop", "compose_yaml": yaml, "env": env, "wait": False}
    shown = {"project": "shop", "sha256": "ab" * 32, "bytes": len(yaml), "env_names": ["DB_PASSWORD"]}
    first = ApprovalStore.in_state_dir(state)
    asked = Request("deploy", "shop", shown, call_digest("deploy", real), "compose_agent_token", None, "s1", "plan")
    approval, _ = first.request(asked)
    path = state / "approvals.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700
    text = path.read_text()
    assert "hunter2-very-secret" not in text and "in-the-file-secret" not in text and "DB_PASSWORD" in text
    # Another process's store (a restarted gateway, or the HTTP one beside a stdio one) sees it and acts on it.
    second = ApprovalStore.in_state_dir(state)
    second.decide(approval.id, approve=True, by=BOB)
    first.redeem(
        approval.id, tool="deploy", call=call_digest("deploy", real), caller="compose_agent_token", on_behalf_of=None,
        state="s1",
    )  # fmt: skip
    assert second.get(approval.id).status == "used"  # type: ignore[union-attr]
    assert not list(state.glob(".approvals.json-*"))  # no temporary file left behind


def test_two_retries_racing_for_one_approval_act_once(tmp_path: Path) -> None:
    stores = [ApprovalStore(tmp_path / "approvals.json") for _ in range(8)]
    approval, _ = stores[0].request(request())
    stores[1].decide(approval.id, approve=True, by=BOB)
    won: list[int] = []
    refused: list[str] = []
    start = threading.Barrier(len(stores))

    def retry(index: int) -> None:
        start.wait()
        try:
            redeem(stores[index], approval.id)
            won.append(index)
        except PolicyViolation as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=retry, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == len(stores) - 1
    assert all("already used" in text for text in refused)


def test_a_malformed_record_is_dropped_and_a_broken_file_refuses_rather_than_guesses(tmp_path: Path) -> None:
    path = tmp_path / "approvals.json"
    store = ApprovalStore(path)
    approval, _ = store.request(request())
    data = json.loads(path.read_text())
    data["approvals"][approval.id]["status"] = "approved-by-me"
    data["approvals"]["f" * 32] = {"id": "f" * 32, "status": "approved"}
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)
    assert store.all() == []  # neither can act: one is not a status, the other is not a whole record
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        store.request(request())


def test_policy_approve_names_known_tools_per_stack_or_all_and_a_time_in_seconds(tmp_path: Path) -> None:
    policy = Policy.model_validate({"approve": ["down"], "stacks": {"shop": {"approve": ["up", "deploy"]}}})
    assert policy.needs_approval("down", "blog") and policy.needs_approval("down", "shop")
    assert policy.needs_approval("up", "shop") and not policy.needs_approval("up", "blog")
    assert policy.approval_ttl == 3600
    config = tmp_path / "config.json"
    for bad, words in [
        ({"approve": ["ps"]}, "approve names unknown tool"),
        ({"stacks": {"shop": {"approve": ["approve"]}}}, "approve names unknown tool"),
        ({"approval_ttl": 0}, "approval_ttl"),
        ({"approval_ttl": 30 * 24 * 3600}, "approval_ttl"),
    ]:
        config.write_text(json.dumps({"policy": bad}))
        with pytest.raises(ConfigError, match=words):
            load_settings({"CONFIG_PATH": str(config)})
    config.write_text(json.dumps({"panel_url": "https://panel.example.com/"}))
    assert load_settings({"CONFIG_PATH": str(config)}).panel_url == "https://panel.example.com"
    env = {"CONFIG_PATH": str(config), "COMPOSE_AGENT_PANEL_URL": "https://ops.example.com/panel"}
    assert load_settings(env).panel_url == "https://ops.example.com/panel"
    with pytest.raises(ConfigError, match="not an http"):
        load_settings({**env, "COMPOSE_AGENT_PANEL_URL": "javascript:alert(1)"})
