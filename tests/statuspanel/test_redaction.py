"""The panel's redacting middleware: every textual answer, whole or streamed, without the secrets it knows."""

from __future__ import annotations

from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.api import Redactor
from statuspanel.redaction import RedactingMiddleware

VALUE = "panel-secret-0123456789"


def _app(redactor: Redactor) -> Starlette:
    def events() -> Iterator[str]:
        yield f"data: first {VALUE}\n\n"
        yield "data: second\n\n"

    routes = [
        Route("/json", lambda request: JSONResponse({"logs": f"before {VALUE} after"})),
        Route("/html", lambda request: Response(f"<pre>{VALUE}</pre>", media_type="text/html")),
        Route("/static/x.js", lambda request: Response(f"var x = '{VALUE}'", media_type="text/javascript")),
        Route("/png", lambda request: Response(VALUE.encode(), media_type="image/png")),
        Route("/events", lambda request: StreamingResponse(events(), media_type="text/event-stream")),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(RedactingMiddleware, redactor=redactor)
    return app


def test_pages_and_json_are_redacted_with_a_correct_length() -> None:
    redactor = Redactor()
    redactor.add("DB_PASSWORD", VALUE)
    with TestClient(_app(redactor)) as client:
        answer = client.get("/json")
        assert answer.json() == {"logs": "before [redacted:DB_PASSWORD] after"}
        assert int(answer.headers["content-length"]) == len(answer.content)
        assert client.get("/html").text == "<pre>[redacted:DB_PASSWORD]</pre>"
        streamed = client.get("/events").text
        assert VALUE not in streamed and "data: first [redacted:DB_PASSWORD]" in streamed
        assert "data: second" in streamed
        # Not text: passed as it is (static files are the panel's own, images are bytes).
        assert client.get("/png").content == VALUE.encode()
        assert VALUE in client.get("/static/x.js").text


def test_a_panel_that_knows_no_secret_passes_answers_through() -> None:
    with TestClient(_app(Redactor())) as client:
        assert client.get("/json").json() == {"logs": f"before {VALUE} after"}
