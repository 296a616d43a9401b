"""Schemathesis hooks for scripts/api-fuzz (loaded through SCHEMATHESIS_HOOKS).

Two things a generated request cannot do by itself, and nothing else:

- An age recipient ends in a bech32 checksum, which the OpenAPI document states in words but no
  JSON Schema pattern can: a generated recipient that matches the documented pattern is replaced
  by a real one (its identity was thrown away), so that a campaign request valid by the document
  is also valid by the server. Recipients that do not match (negative cases) are sent as made.
- `GET /sync` with the documented upgrade headers answers 101 and the socket becomes a WebSocket.
  The HTTP client would put it back in its pool and send the next request over it; the
  connections of the session are closed after a 101 instead.
"""

import re
from datetime import datetime

import schemathesis
import schemathesis.transport.requests as transport

RECIPIENT = "age1v0z3p9f9w4g5fzdn0dxqdw0cxp8s4m8vtkd3gftrexn0fk7d4a4qspd049"
RECIPIENT_PATTERN = re.compile(r"age1[02-9ac-hj-np-z]{58}")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.operation.method.upper() != "POST" or case.operation.path != "/api/v1/campaigns":
        return
    if not isinstance(case.body, dict) or not isinstance(case.body.get("recipients"), list):
        return
    case.body["recipients"] = [
        RECIPIENT if isinstance(r, str) and RECIPIENT_PATTERN.fullmatch(r) else r
        for r in case.body["recipients"]
    ]


_request = transport._request


def _request_closing_upgrades(session, data, max_stream_events):
    response = _request(session, data, max_stream_events)
    if response.status_code == 101:
        session.close()
    return response


transport._request = _request_closing_upgrades


@schemathesis.hook("before_call")
def ordered_window(ctx, case, **kwargs):
    """The totals' `from` must come before `to` (a 400 otherwise, as documented in words): a
    generated pair is put in order, or `to` dropped when they are equal."""
    if not case.operation.path.startswith("/api/v1/campaigns/{id}/totals") or not case.query:
        return
    try:
        start = datetime.fromisoformat(str(case.query["from"]))
        end = datetime.fromisoformat(str(case.query["to"]))
    except (KeyError, ValueError):
        return
    if start > end:
        case.query["from"], case.query["to"] = case.query["to"], case.query["from"]
    elif start == end:
        del case.query["to"]
