"""Schemathesis hooks of tests/ingest_fuzz.rs: sign the intake's requests, check every refusal.

Loaded with SCHEMATHESIS_HOOKS=<this file>. Environment:
  ONCEFLOW_FUZZ_SOURCE   the configured source whose secret signs the requests
  ONCEFLOW_FUZZ_SECRET   its HMAC secret
  ONCEFLOW_FUZZ_STATS    where to write, at exit, the counts of what was sent and answered (JSON)

Signing happens on the wire-ready request (requests' PreparedRequest), so the tag covers exactly the
bytes sent: `X-Onceflow-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. Four requests in
five that carry a signature header get a valid one; the fifth keeps what the generator made, and a
request without the header stays without it. Three in four event posts go to the configured source,
the others to whatever source name was generated.
"""

import atexit
import hashlib
import hmac
import itertools
import json
import os
import time
from collections import Counter

import requests.adapters
import schemathesis

SOURCE = os.environ["ONCEFLOW_FUZZ_SOURCE"]
SECRET = os.environ["ONCEFLOW_FUZZ_SECRET"].encode()
STATS = os.environ["ONCEFLOW_FUZZ_STATS"]
HEADER = "X-Onceflow-Signature"

_sends = itertools.count()
_calls = itertools.count()
_statuses = Counter()
_errors = Counter()
_violations = []
_signed = Counter()
# Answers hyper gives before any handler runs, to requests that are not HTTP (schemathesis' probe
# sends a NUL byte in a header value): a bare 400 no application code can shape.
_unparsable = []
# Signed requests to the configured source answered 401: the signing is broken.
_signed_refused = []


def problem(method, status, headers, body):
    """Why an answer breaks the contract: no 5xx but 503, every refusal a JSON {error, detail}."""
    if status >= 500 and status != 503:
        return f"server error {status}"
    if 200 <= status < 300:
        return None
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    if isinstance(content_type, list):  # schemathesis' Response keeps every value of a header
        content_type = content_type[0] if content_type else ""
    if content_type.split(";")[0].strip().lower() != "application/json":
        return f"{status} refusal with content-type {content_type!r}"
    if method == "HEAD":
        return None  # a HEAD answer has no body, by HTTP
    try:
        doc = json.loads(body)
    except ValueError:
        return f"{status} refusal whose body is not JSON: {body[:200]!r}"
    if not isinstance(doc, dict):
        return f"{status} refusal whose body is not an object: {body[:200]!r}"
    for key in ("error", "detail"):
        if not isinstance(doc.get(key), str):
            return f"{status} refusal without a string {key!r}: {body[:200]!r}"
    return None


def sign(body, now=None):
    t = str(int(now if now is not None else time.time()))
    tag = hmac.new(SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={tag}"


_send = requests.adapters.HTTPAdapter.send


def _signed_send(self, request, *args, **kwargs):
    n = next(_sends)
    signed = False
    if HEADER in request.headers and n % 5 != 4:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        request.headers[HEADER] = sign(body)
        _signed["signed"] += 1
        signed = True
    elif HEADER in request.headers:
        _signed["kept"] += 1
    else:
        _signed["absent"] += 1
    response = _send(self, request, *args, **kwargs)
    _statuses[str(response.status_code)] += 1
    why = problem(request.method, response.status_code, response.headers, response.content)
    what = f"{request.method} {request.path_url}"
    if why is not None and any("\x00" in v for v in request.headers.values()):
        _unparsable.append(f"{what}: {why}")
    elif why is not None and len(_violations) < 50:
        _violations.append(f"{what}: {why}")
    elif response.status_code >= 400 and request.method != "HEAD":
        _errors[response.json()["error"]] += 1
    if signed and response.status_code == 401 and request.path_url.startswith(f"/v1/sources/{SOURCE}/"):
        _signed_refused.append(f"{what}: {response.content[:200]!r}")
    return response


requests.adapters.HTTPAdapter.send = _signed_send


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.path_parameters is not None and "source" in case.path_parameters:
        if next(_calls) % 4 != 3:
            case.path_parameters["source"] = SOURCE


@schemathesis.check
def onceflow_refusals(ctx, response, case):
    """No 5xx but 503; every refusal JSON {error, detail} with content-type application/json."""
    why = problem(response.request.method, response.status_code, response.headers, response.content)
    if why is not None:
        raise AssertionError(why)


@atexit.register
def _write_stats():
    with open(STATS, "w") as f:
        json.dump(
            {
                "requests": sum(_statuses.values()),
                "statuses": _statuses,
                "errors": _errors,
                "signatures": _signed,
                "violations": _violations,
                "unparsable": _unparsable,
                "signed_refused": _signed_refused[:20],
            },
            f,
            indent=1,
        )
