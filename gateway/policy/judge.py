"""The judge: one stack's reading and Compose's model, against the allowlist, into one verdict.

Two steps, and the order is the point:

1. :func:`judge_references` judges the :class:`~gateway.policy.reader.Reading` alone: every file
   reference must resolve inside the stack folder, and the stack's ``.env`` may not steer Compose.
   Compose reads these files while loading, so a refusal here means Compose never runs.
2. :func:`judge_model` walks Compose's normalised model (``docker compose --profile '*' config
   --format json``) key by key against :data:`~gateway.policy.allowlist.TABLE`: a key it does not
   know is refused with ``unknown_key`` and its path; a known key is judged by its constraint.

Both return a :class:`Judgement` and never raise: a stack that cannot be judged (a control
character in a path, a bug in a check) gets an ``error`` verdict of its own, so one folder can
never take ``list_stacks`` down for everyone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import GatewayError
from ..models import Verdict, Violation
from ..secretrefs import EXTENSION_KEY, declared
from . import constraints
from .allowlist import TABLE
from .findings import At, Context, Findings, JudgeError
from .reader import Reading
from .rules import verdict

__all__ = ["Judgement", "judge_references", "judge_model", "judge_stack"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Judgement:
    """A verdict, why it could not be reached (``error_code``), and every host path judged with where it resolved."""

    verdict: Verdict
    resolved: dict[str, str] = field(default_factory=dict)
    error_code: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict.allowed

    @property
    def violations(self) -> list[Violation]:
        return self.verdict.violations


def judge_references(reading: Reading, context: Context) -> Judgement:
    """The refusals found in the reading alone: the files Compose would read while loading, and ``.env``."""
    findings = Findings(context)
    return _guarded(findings, lambda: _references(findings, reading))


def judge_model(reading: Reading, model: Mapping[str, Any], context: Context) -> Judgement:
    """The references, then every key of Compose's normalised ``model``, against the allowlist."""
    findings = Findings(context)

    def run() -> None:
        _references(findings, reading)
        _Walk(findings).walk(model, _ROOT, None)
        _vault_paths(findings, model)

    return _guarded(findings, run)


def judge_stack(reading: Reading, model: Mapping[str, Any] | None, context: Context) -> Judgement:
    """:func:`judge_model`, or :func:`judge_references` alone when there is no model (Compose must not run)."""
    return judge_references(reading, context) if model is None else judge_model(reading, model, context)


def _guarded(findings: Findings, run: Any) -> Judgement:
    try:
        run()
    except JudgeError as exc:
        return Judgement(Verdict(allowed=False, error=str(exc)), findings.resolved, exc.code)
    except GatewayError as exc:
        # The engine could not say who owns a resource the model names: refused until it can.
        message = (
            f"the policy guard could not judge this stack ({str(exc).splitlines()[0]}); it is refused until it can"
        )
        return Judgement(Verdict(allowed=False, error=message), findings.resolved, "judge_failed")
    except Exception as exc:  # noqa: BLE001 - a failure to judge is this stack's verdict, never everyone's error
        logger.warning("the policy guard failed on stack %s: %s", findings.stack, type(exc).__name__, exc_info=True)
        message = f"the policy guard could not judge this stack ({type(exc).__name__}); it is refused until it can"
        return Judgement(Verdict(allowed=False, error=message), findings.resolved, "judge_failed")
    return Judgement(verdict(findings.found), findings.resolved)


def _references(findings: Findings, reading: Reading) -> None:
    for ref in reading.references:
        if not ref.paths:
            findings.add("outside_files", ref.service, f"{ref.kind} {ref.value!r} {ref.problem}")
        for path in ref.paths:
            if ref.kind in ("secret file", "config file"):
                # Mounted into a container, not only read: the socket is named as such.
                findings.host_path(ref.service, f"{ref.kind} {ref.value}", str(path), outside_rule="outside_files")
            else:
                findings.file(ref.service, ref.kind, str(path), ref.value)
    constraints.compose_env(findings, reading.dotenv_names)


def _vault_paths(findings: Findings, model: Mapping[str, Any]) -> None:
    """Each secret the stack takes from Vault, from a path the operator gives it (by default its own folder).

    Whoever writes a compose file gets its secrets into a container of their own: without this, a
    stack could read every secret the gateway's Vault token can, another stack's included.
    """
    allowed = findings.context.policy.secret_paths_of(findings.stack)
    for name, ref in declared(model).items():
        path = f"{ref.mount}/{ref.path}"
        if not any(path == root or path.startswith(f"{root}/") for root in allowed):
            findings.add(
                "vault_paths",
                None,
                f"{EXTENSION_KEY}.secrets.{name} reads {path}, outside the Vault paths this stack may read "
                f"({', '.join(allowed) or 'none'})",
            )


@dataclass
class _Pattern:
    """One key path of the table as a tree node: its children by name, ``*`` and ``x-*``."""

    pattern: str
    fields: dict[str, _Pattern] = field(default_factory=dict)

    def child(self, name: str, names: bool) -> _Pattern | None:
        if names:
            return self.fields.get("*")
        return self.fields.get("x-*" if name.startswith("x-") else name)


def _tree() -> _Pattern:
    """The table's paths as a tree, so a walk moves down it instead of building a string per key.
    Each node keeps its pattern, and the walk looks the entry up in :data:`TABLE` by it."""
    root = _Pattern("")
    for pattern in TABLE:
        node = root
        for depth, part in enumerate(pattern.split(".") if pattern else []):
            node = node.fields.setdefault(part, _Pattern(".".join(pattern.split(".")[: depth + 1])))
    return root


_ROOT = _tree()


class _Walk:
    """One walk of a model: each key found by its node in the table's tree, judged, and walked into.

    The concrete path (``services.web.volumes[0].source``) is a stack of parts, joined only when a
    check or a violation needs it.
    """

    def __init__(self, findings: Findings) -> None:
        self.f = findings
        self.allowed_keys = findings.context.policy.allowed_keys(findings.stack)
        self.parts: list[str] = []

    def path(self) -> str:
        return "".join(part if part.startswith("[") or not i else f".{part}" for i, part in enumerate(self.parts))

    def at(self, service: str | None) -> At:
        names = [part for part in self.parts if not part.startswith("[")]
        return At(service, self.path(), names[-1] if names else "")

    def walk(self, value: Any, node: _Pattern | None, service: str | None) -> None:
        key = TABLE.get(node.pattern) if node is not None else None
        if key is None or key.unknown:
            if not self._operator_allows():
                why = f" ({key.unknown})" if key is not None else ""
                self.f.add("unknown_key", service, f"{self.path()} is a key the guard does not know{why}")
            return
        if key.opaque:
            if key.check is not None:
                key.check(self.f, self.at(service), value)
            return
        if value is None:
            return
        if isinstance(value, list):
            if not key.sequence:
                self._shape(service, "a list")
                return
            for index, item in enumerate(value):
                self.parts.append(f"[{index}]")
                self.walk(item, node, service)
                self.parts.pop()
            return
        if key.check is not None:
            key.check(self.f, self.at(service), value)
        if isinstance(value, dict):
            if key.mapping is None:
                self._shape(service, "a mapping")
                return
            assert node is not None
            names = key.mapping == "map"
            services = node.pattern == "services"
            for name, child in value.items():
                name = str(name)
                child_node = node.child(name, names)
                if names or child_node is None:
                    self.f.clean("key", name)  # a free name, or one shown in a refusal
                self.parts.append(name)
                self.walk(child, child_node, name if services else service)
                self.parts.pop()
        elif not key.scalar:
            self._shape(service, "a plain value")

    def _shape(self, service: str | None, what: str) -> None:
        self.f.add("unknown_key", service, f"{self.path()} holds {what}, a shape the guard does not know there")

    def _operator_allows(self) -> bool:
        segments = [part for part in self.parts if not part.startswith("[")]
        for allowed in self.allowed_keys:
            if len(allowed) == len(segments) and all(a in ("*", s) for a, s in zip(allowed, segments, strict=True)):
                return True
        return False
