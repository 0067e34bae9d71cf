"""Schemathesis hooks for scripts/api-fuzz.sh.

A few rules of a submission cannot be written in JSON Schema, so the OpenAPI document states them in
words: step names are unique within a saga, `after` names other steps of the same saga without a
cycle, a retry policy's `max_backoff_ms` is at least its `initial_backoff_ms`, and no string of a
payload (keys included) holds the NUL character. A body the
fuzzer draws as valid by the document would then be refused for one of these, and counted as "a
valid request rejected". So a drawn body that the document accepts is repaired to keep these rules
too; a body the document refuses (a negative case) is left exactly as drawn.

Likewise the saga list takes `before` or `after`, not both (OpenAPI cannot relate two parameters):
a query with both as valid cursors loses `after`.
"""

import json
import os
import urllib.request
import uuid

import jsonschema_rs
import schemathesis

SUBMIT = ("POST", "/api/v1/sagas")
LIST = ("GET", "/api/v1/sagas")


def _submission_validator():
    url = os.environ["API_FUZZ_SCHEMA_URL"]
    headers = {}
    if os.environ.get("API_FUZZ_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["API_FUZZ_TOKEN"]
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as answer:
        document = json.load(answer)
    schema = dict(document["components"]["schemas"]["SagaSubmission"])
    # Local references (#/components/...) resolve against the root: give it the components.
    schema["components"] = document["components"]
    return jsonschema_rs.validator_for(schema)


_VALID = _submission_validator()


def _repair_retry(policy):
    if not isinstance(policy, dict):
        return
    initial, cap = policy.get("initial_backoff_ms"), policy.get("max_backoff_ms")
    if initial is not None and cap is None:
        policy["max_backoff_ms"] = initial
    elif cap is not None and initial is None:
        policy["initial_backoff_ms"] = cap
    elif initial is not None and cap is not None and cap < initial:
        policy["initial_backoff_ms"], policy["max_backoff_ms"] = cap, initial


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


def _repair(body):
    body = _without_nul(body)
    steps = body["steps"]
    seen = set()
    for n, step in enumerate(steps):
        if step["name"] in seen:
            step["name"] = f"s{n}-{step['name']}"[:64]
        seen.add(step["name"])
    # Dependencies only on earlier steps: no unknown name, no self-dependency, no cycle.
    earlier = []
    for step in steps:
        if step.get("after") is not None:
            step["after"] = [name for name in step["after"] if name in earlier]
        earlier.append(step["name"])
        _repair_retry(step.get("retry"))
        _repair_retry(step.get("compensation_retry"))
    if isinstance(body.get("check_back"), dict):
        _repair_retry(body["check_back"].get("retry"))
    return body


@schemathesis.hook
def map_body(ctx, body):
    operation = ctx.operation
    if operation is None or (operation.method.upper(), operation.path) != SUBMIT:
        return body
    if not isinstance(body, dict) or not _VALID.is_valid(body):
        return body
    repaired = _repair(json.loads(json.dumps(body)))
    # The repair only narrows what the document allows; if it ever did not, keep the draw.
    return repaired if _VALID.is_valid(repaired) else body


def _is_cursor(value):
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@schemathesis.hook
def map_query(ctx, query):
    operation = ctx.operation
    if operation is None or (operation.method.upper(), operation.path) != LIST:
        return query
    if not isinstance(query, dict):
        return query
    # Only two valid cursors: a case made negative by a bad `after` stays as drawn.
    if _is_cursor(query.get("before")) and _is_cursor(query.get("after")):
        query = dict(query)
        del query["after"]
    return query
