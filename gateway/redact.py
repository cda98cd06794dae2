"""Redaction by value: every secret the gateway resolved, in every form it can recognise, replaced by its name.

A stack's secrets come from Vault (:mod:`gateway.secretrefs`); as each value is read, it is added
to the process's one :data:`REDACTOR`. From then on, whatever the gateway sends out passes through
it at the edge: tool results, resources, prompts and notifications (:mod:`gateway.mcp.redaction`),
the audit log, the gateway's own log (:class:`RedactingFilter`) and the status panel's pages.

The forms recognised for a value ``v``, each replaced by ``[redacted:NAME]``:

- ``v`` itself;
- JSON-escaped (``\\"``, ``\\n``, ``\\u00e9``...), as in a JSON document or a log line that quotes it;
- as Python's ``repr`` and ``ascii`` quote it (an error message's ``{value!r}``);
- URL-encoded (``%XX`` and ``+`` for a space, with and without ``/`` kept);
- base64, standard and URL-safe alphabets, with and without padding, of ``v`` and of ``v`` plus a
  newline (what ``echo "$SECRET" | base64`` prints).

Nothing else: a container that prints its secret reversed, hex-encoded, split over two lines, or
base64-encoded with text around it before encoding, prints it in a form nobody predicted.
docs/secrets.md says so.

Every form is a literal. With a few of them (up to :data:`SCAN_LIMIT` forms, a handful of
secrets), each is looked for with ``str.__contains__`` (CPython's fast search runs at memory speed)
and only those present are replaced, longest first; past that, one compiled alternation (longest
first, so that a padded form wins over its unpadded prefix) makes one pass over the text, whatever
the number of secrets. A text that holds none of them is returned as it is (the same object).
``bench/redaction.py`` measures both; docs/secrets.md has the figures.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["REDACTOR", "RedactingFilter", "Redactor", "forms_of", "install_log_redaction", "marker", "redact_record"]

# Up to this many forms, a search per form beats Python's regular expression engine on a large text.
SCAN_LIMIT = 48
# Forms shorter than this are not added: they would redact ordinary text. Values are at least
# MIN_SECRET_LENGTH (gateway.secretrefs) long, so only degenerate encodings fall below it.
_MIN_FORM = 8


def marker(name: str) -> str:
    """What a secret's value is replaced with."""
    return f"[redacted:{name}]"


def forms_of(value: str) -> set[str]:
    """Every form of ``value`` the redactor recognises (see the module's docstring)."""
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    # As Python quotes it (an error message's {value!r}, a log's %r): backslashes and quotes escaped.
    forms |= {repr(value)[1:-1], ascii(value)[1:-1]}
    forms |= {quote(value, safe=""), quote(value), quote_plus(value)}
    for raw in (value.encode(), (value + "\n").encode()):
        for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
            forms |= {encoded, encoded.rstrip("=")}
    return {form for form in forms if len(form) >= _MIN_FORM}


class Redactor:
    """Knows every secret value resolved in this process, and removes each in every known form.

    Thread-safe: values are added from the event loop and from worker threads, and texts are
    redacted in both. A redaction reads one immutable snapshot (pattern and names), so an addition
    while a text is redacted never shows it half-built.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # form -> the secret's name
        self._pattern: re.Pattern[str] | None = None
        self._ordered: tuple[str, ...] = ()  # the forms, longest first
        self._state: tuple[re.Pattern[str], dict[str, str], tuple[str, ...]] | None = None

    def add(self, name: str, value: str) -> None:
        """Redact ``value`` (in all its forms) as ``[redacted:name]`` from now on."""
        self.add_many({name: value})

    def add_many(self, values: Mapping[str, str]) -> None:
        """Redact each value of ``values`` (name -> value) from now on; one recompilation for all."""
        with self._lock:
            names = dict(self._names)
            for name, value in values.items():
                for form in forms_of(value):
                    # A value shared by two names keeps the first name: either is true, and one is stable.
                    names.setdefault(form, name)
            if names == self._names:
                return
            # Longest first: Python's alternation takes the first that matches, not the longest.
            ordered = sorted(names, key=lambda form: (-len(form), form))
            pattern = re.compile("|".join(re.escape(form) for form in ordered))
            # One assignment: a redaction in another thread reads either the old state or the new one.
            self._state = (pattern, names, tuple(ordered))
            self._pattern, self._names, self._ordered = self._state

    def __bool__(self) -> bool:
        return self._pattern is not None

    def redact(self, text: str) -> str:
        """``text`` with every known form of every secret replaced by its marker."""
        state = self._state
        if state is None or not text:
            return text
        pattern, names, ordered = state
        if len(ordered) > SCAN_LIMIT:
            return pattern.sub(lambda match: marker(names[match.group()]), text)
        found = [form for form in ordered if form in text]
        for form in found:
            text = text.replace(form, marker(names[form]))
        return text

    def redact_data(self, data: Any) -> Any:
        """A JSON-like value (dicts, lists, strings...) with every string redacted, keys included.

        Returns ``data`` itself when nothing in it changed, so a result with no secret is not copied.
        """
        if self._pattern is None:
            return data
        return _walk(self.redact, data)

    def names(self) -> set[str]:
        """The names whose values are known (for tests and the bench; never the values)."""
        return set(self._names.values())


def _walk(redact: Any, data: Any) -> Any:
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, value in data.items():
            new_key = redact(key) if isinstance(key, str) else key
            new_value = _walk(redact, value)
            changed = changed or new_key is not key or new_value is not value
            out[new_key] = new_value
        return out if changed else data
    if isinstance(data, list | tuple):
        items = [_walk(redact, item) for item in data]
        if all(new is old for new, old in zip(items, data, strict=True)):
            return data
        return items if isinstance(data, list) else tuple(items)
    return data


class RedactingFilter(logging.Filter):
    """A logging filter that removes secrets from a record's message, arguments and traceback.

    For a handler that records pass without the record factory of :func:`install_log_redaction`
    (one made before it was installed).
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or REDACTOR

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self.redactor)
        return True


def redact_record(record: logging.LogRecord, redactor: Redactor) -> None:
    """Render ``record``'s message once (its ``%`` arguments merged) and redact it, and its traceback."""
    if not redactor:
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is the handler's to report
        return
    redacted = redactor.redact(message)
    if redacted is not message:
        record.msg, record.args = redacted, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redactor.redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redactor.redact(record.stack_info)


def install_log_redaction(redactor: Redactor | None = None) -> None:
    """Redact every log record of this process as it is made, whichever handler (ours, uvicorn's, the
    notifier's) then takes it. Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return
    chosen = redactor or REDACTOR

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record, chosen)
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# The process's one redactor: every value resolved for any stack is added here.
REDACTOR = Redactor()
