"""The gateway's public surface for the status panel: the one module the panel imports.

The panel is an MCP client of the gateway; in legacy mode it also runs the same operations
in-process. Everything it needs from the gateway is named here, so the gateway's other modules
can change without the panel noticing. A test pins that the panel imports nothing else.

What only legacy mode needs (the operations, the gateway's settings) is loaded on first use, so
a panel in client mode loads a handful of the gateway's modules, and none that reach Docker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .approvals.records import ApprovalInfo, check_approval_id
from .audit import ON_BEHALF_OF_META_KEY, AuditLog, on_behalf_of_meta
from .auth.people import People, open_people
from .auth.principals import READ_TOOLS, STATUS_PANEL, TokenStore
from .auth.tokens import (
    EnvTokenSource,
    GeneratedTokenSource,
    TokenSource,
    load_initial_tokens,
    refresh_tokens_forever,
    token_source_from_settings,
)
from .backoff import Backoff
from .engine.logs import DEFAULT_TAIL, MAX_TAIL, SINCE_HELP, compile_grep, parse_since, validate_tail
from .envparse import TOKEN_SOURCE_ENV, CommonFields, gather, parse_bool, settle
from .errors import (
    APPROVAL_META_KEY,
    CONFIRM_META_KEY,
    ERROR_META_KEY,
    ConfirmationRequired,
    GatewayError,
    InvalidInput,
)
from .metrics import CommandExecutionMetrics, ControlPlane
from .models import (
    Action,
    ActionResult,
    DeployResult,
    DownRisk,
    LogsResult,
    PlanAction,
    PlanResult,
    PsResult,
    ServiceStatus,
    StackInfo,
    StackList,
    SwarmNode,
    Verdict,
    VersionInfo,
    VersionList,
    Violation,
    VolumeRisk,
)
from .ratelimit import FailureLimiter, client_key
from .redact import REDACTOR, Redactor, install_log_redaction
from .stacks import validate_project_name, validate_services

if TYPE_CHECKING:
    from .config import Settings, load_settings
    from .operations import SERVICE_ACTIONS, ComposeOperations, ServiceAction

# Legacy mode's names, and the module each is loaded from on first use.
_LAZY = {
    "Settings": "config",
    "load_settings": "config",
    "ComposeOperations": "operations",
    "SERVICE_ACTIONS": "operations",
    "ServiceAction": "operations",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __package__), name)


__all__ = [
    "REDACTOR",
    "Redactor",
    "install_log_redaction",
    "TOKEN_SOURCE_ENV",
    "CommonFields",
    "gather",
    "settle",
    "People",
    "open_people",
    "DownRisk",
    "PlanAction",
    "Verdict",
    "VersionInfo",
    "Violation",
    "VolumeRisk",
    "DeployResult",
    "PlanResult",
    "VersionList",
    "CONFIRM_META_KEY",
    "ConfirmationRequired",
    "APPROVAL_META_KEY",
    "ApprovalInfo",
    "check_approval_id",
    "on_behalf_of_meta",
    "ON_BEHALF_OF_META_KEY",
    "client_key",
    "FailureLimiter",
    "parse_since",
    "SINCE_HELP",
    "parse_bool",
    "READ_TOOLS",
    "Action",
    "ActionResult",
    "AuditLog",
    "Backoff",
    "CommandExecutionMetrics",
    "ComposeOperations",
    "ControlPlane",
    "DEFAULT_TAIL",
    "ERROR_META_KEY",
    "EnvTokenSource",
    "GatewayError",
    "GeneratedTokenSource",
    "InvalidInput",
    "LogsResult",
    "MAX_TAIL",
    "PsResult",
    "SERVICE_ACTIONS",
    "STATUS_PANEL",
    "ServiceAction",
    "ServiceStatus",
    "SwarmNode",
    "Settings",
    "StackInfo",
    "StackList",
    "TokenSource",
    "TokenStore",
    "compile_grep",
    "load_initial_tokens",
    "load_settings",
    "refresh_tokens_forever",
    "token_source_from_settings",
    "validate_project_name",
    "validate_services",
    "validate_tail",
]
