"""Flattened output schemas accept exactly what pydantic's schemas accept."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from pydantic import TypeAdapter

from gateway.mcp.schema import flatten_schema
from gateway.models import ActionResult, LogsResult, PsResult, StackList

GOOD_PS = {
    "project": "shop",
    "services": [
        {
            "service": "web",
            "container": "shop-web-1",
            "state": "running",
            "health": "healthy",
            "exit_code": None,
            "ports": ["0.0.0.0:8080->80/tcp"],
            "image": "nginx",
            "started_at": "2026-01-01T00:00:00Z",
        },
        {
            "service": "db",
            "container": None,
            "state": "missing",
            "health": None,
            "exit_code": None,
            "ports": [],
            "image": None,
            "started_at": None,
        },
    ],
}
BAD_PS = [
    {"project": "shop"},
    {"project": "shop", "services": [{"service": "web"}]},
    {"project": "shop", "services": [{**GOOD_PS["services"][0], "exit_code": "zero"}]},  # type: ignore[dict-item]
    {"project": "shop", "services": [{**GOOD_PS["services"][0], "health": 3}]},  # type: ignore[dict-item]
    {"project": 1, "services": []},
]


@pytest.mark.parametrize("model", [PsResult, StackList, LogsResult, ActionResult])
def test_flat_schemas_have_no_references_or_bare_type_unions(model: type) -> None:
    flat = json.dumps(flatten_schema(TypeAdapter(model).json_schema()))
    assert "$ref" not in flat and "$defs" not in flat and '"anyOf"' not in flat


def test_nullable_lists_fold_and_keep_their_item_rules() -> None:
    flat = flatten_schema(TypeAdapter(ActionResult).json_schema())
    base = {"project": "p", "action": "up", "ok": True, "duration_ms": 1.0}
    jsonschema.validate({**base, "services": None}, flat)
    jsonschema.validate({**base, "services": ["web"]}, flat)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**base, "services": [1]}, flat)


@pytest.mark.parametrize("document", [GOOD_PS, *BAD_PS])
def test_flat_and_original_ps_schemas_agree(document: dict[str, Any]) -> None:
    original = TypeAdapter(PsResult).json_schema()
    flat = flatten_schema(original)

    def valid(schema: dict[str, Any]) -> bool:
        try:
            jsonschema.validate(document, schema)
        except jsonschema.ValidationError:
            return False
        return True

    assert valid(flat) == valid(original)
    assert valid(flat) is (document is GOOD_PS)


def test_an_unresolvable_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot inline"):
        flatten_schema({"properties": {"x": {"$ref": "https://example.com/schema"}}})


def test_a_property_named_title_is_kept() -> None:
    flat = flatten_schema({"title": "Doc", "type": "object", "properties": {"title": {"type": "string", "title": "T"}}})
    assert flat == {"type": "object", "properties": {"title": {"type": "string"}}}
