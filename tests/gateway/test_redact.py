"""The redactor: every form it promises, nothing it does not, and text around a secret left readable."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote, quote_plus

import pytest

from gateway.redact import RedactingFilter, Redactor, forms_of, install_log_redaction, marker
from gateway.secretrefs import MIN_SECRET_LENGTH

VALUE = 'Pw7"q/+%\\é x'


def test_every_form_of_a_value_is_replaced_by_its_name() -> None:
    redactor = Redactor()
    redactor.add("DB_PASSWORD", VALUE)
    raw = VALUE.encode()
    forms = [
        VALUE,
        json.dumps(VALUE)[1:-1],
        json.dumps(VALUE, ensure_ascii=False)[1:-1],
        repr(VALUE)[1:-1],
        ascii(VALUE)[1:-1],
        quote(VALUE, safe=""),
        quote(VALUE),
        quote_plus(VALUE),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw + b"\n").decode(),
        base64.urlsafe_b64encode(raw + b"\n").decode().rstrip("="),
    ]
    for form in forms:
        assert redactor.redact(f"before {form} after") == "before [redacted:DB_PASSWORD] after", form


def test_a_json_document_quoting_the_value_is_redacted_and_stays_json() -> None:
    redactor = Redactor()
    redactor.add("TOKEN", VALUE)
    document = json.dumps({"line": f"token={VALUE};", "nested": [VALUE]})
    redacted = redactor.redact(document)
    assert json.loads(redacted) == {"line": "token=[redacted:TOKEN];", "nested": ["[redacted:TOKEN]"]}


def test_structured_data_is_walked_keys_included_and_untouched_data_is_not_copied() -> None:
    redactor = Redactor()
    redactor.add("API_KEY", "k-1234567890")
    clean = {"a": ["b", {"c": 1}]}
    assert redactor.redact_data(clean) is clean
    dirty = {"k-1234567890": ["x k-1234567890 y", 3, None], "ok": "fine"}
    assert redactor.redact_data(dirty) == {"[redacted:API_KEY]": ["x [redacted:API_KEY] y", 3, None], "ok": "fine"}


def test_the_longest_secret_wins_where_one_contains_another() -> None:
    redactor = Redactor()
    redactor.add_many({"SHORT": "abcdefgh", "LONG": "abcdefgh-and-more"})
    assert redactor.redact("x abcdefgh-and-more y abcdefgh z") == "x [redacted:LONG] y [redacted:SHORT] z"


def test_a_secret_inside_ordinary_words_is_redacted_there_too_which_is_why_short_ones_are_refused() -> None:
    # Redaction is by value: a secret that is also a substring of words removes those words' letters.
    # Values shorter than MIN_SECRET_LENGTH are refused for that reason (gateway.secretrefs).
    redactor = Redactor()
    redactor.add("WORD", "password")
    assert redactor.redact("passwords") == "[redacted:WORD]s"
    assert MIN_SECRET_LENGTH >= 8
    assert all(len(form) >= 8 for form in forms_of("abcdefgh"))


def test_an_empty_redactor_returns_the_very_text() -> None:
    redactor = Redactor()
    text = "nothing to see"
    assert not redactor
    assert redactor.redact(text) is text
    redactor.add("X_SECRET", "a-long-secret-value")
    assert redactor
    assert redactor.redact(text) is text


def test_a_log_record_is_redacted_in_its_arguments_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor()
    redactor.add("DB_PASSWORD", VALUE)
    logger = logging.getLogger("tests.redact")
    record = logger.makeRecord("tests.redact", logging.ERROR, __file__, 1, "connect with %s failed", (VALUE,), None)
    try:
        raise RuntimeError(f"refused {VALUE}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter(redactor).filter(record)
    text = logging.Formatter().format(record)
    assert VALUE not in text
    assert "connect with [redacted:DB_PASSWORD] failed" in text
    assert "RuntimeError: refused [redacted:DB_PASSWORD]" in text


def test_the_record_factory_redacts_for_every_handler(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.redact import REDACTOR

    install_log_redaction()
    install_log_redaction()  # idempotent
    value = "factory-secret-0123456789"
    REDACTOR.add("FACTORY_SECRET", value)
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("got %s from vault", value)
    assert caplog.messages == [f"got {marker('FACTORY_SECRET')} from vault"]
