"""The OpenAPI document is valid, describes exactly the routes the daemon serves, and what
the routes really answer (status codes, bodies, parameters) matches it.

An equivalent of a schemathesis run, with the calls chosen so that each documented answer
of the served routes is really produced: every reply is validated against the schema of its
operation and status, and every typed query parameter is sent a bad value and must get a
documented 400.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from types import ModuleType
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from dpd import __version__
from dpd.config import RateLimit
from dpd.http.auth import API_PREFIX, OPEN_PATHS, WS_PREFIX, Authenticator
from dpd.http.openapi import (
    app_operations,
    documented_operations,
    load_document,
    openapi_path,
    route_operation,
)
from dpd.http.routes import fleet as fleet_routes
from dpd.http.routes import logs as logs_routes
from dpd.http.routes import stream as stream_routes
from dpd.http.routing import declared_routes
from dpd.logs.entries import LEVELS
from tests.http.conftest import UNLIMITED, Api, Reply

BASE = "urn:dpd-openapi"
# Documented routes not served yet (none today); a route listed here is exempt from the
# served-versus-documented check until its module is wired into setup_routes.
PENDING: set[tuple[str, str]] = set()
# Served only in fleet mode ([fleet] enabled); tests/fleet/test_fleet_routes.py checks them.
FLEET_ONLY = {(r.method, openapi_path(r.path)) for r in fleet_routes.ROUTES}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return load_document()


def pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def check_reply(document: dict[str, Any], method: str, template: str, reply: Reply) -> None:
    operation = document["paths"][template][method.lower()]
    responses = operation["responses"]
    status = str(reply.status)
    assert status in responses, f"{method} {template} answered undocumented {status}"
    response = resolve(document, responses[status])
    for name, header in response.get("headers", {}).items():
        if not resolve(document, header).get("required"):
            continue
        assert name in reply.headers, f"{method} {template} {status}: header {name} missing"
    content = response.get("content", {})
    if "application/json" not in content:
        return
    registry = Registry().with_resource(
        BASE, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    ref = responses[status].get("$ref")
    response_at = (
        ref.removeprefix("#")
        if ref
        else pointer("paths", template, method.lower(), "responses", status)
    )
    schema_at = response_at + pointer("content", "application/json", "schema")
    validator = Draft202012Validator({"$ref": BASE + "#" + schema_at}, registry=registry)
    errors = sorted(validator.iter_errors(reply.body), key=str)
    assert not errors, f"{method} {template} {status}: {errors[0].message} at {errors[0].path}"


# ------------------------------------------------------------------ the document itself


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert document["info"]["version"] == __version__


def test_every_secured_operation_documents_401_and_every_operation_500(
    document: dict[str, Any],
) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            secured = operation.get("security", document["security"]) != []
            if secured:
                assert "401" in operation["responses"], (method, path)
            if path.startswith("/api/v1/") and secured and "101" not in operation["responses"]:
                has_500 = "500" in operation["responses"] or "logs/stream" in path
                assert has_500, (method, path)


async def test_documented_403_and_429_answers_follow_the_route_table(
    api: Api, document: dict[str, Any]
) -> None:
    """A declared route documents 403 exactly when it needs a permission, and 429 exactly
    when it has a rate class (``dpd.http.routing``: the table the checks run from)."""
    declared = declared_routes(api.daemon.app)
    assert len(declared) >= 25
    problems = []
    for route in declared:
        template = openapi_path(route.path)  # {path:.+} -> {path}
        responses = document["paths"][template][route.method.lower()]["responses"]
        if ("403" in responses) != (route.permission is not None):
            problems.append((route.method, template, "403", route.permission))
        if ("429" in responses) != (route.rate is not None):
            problems.append((route.method, template, "429", route.rate))
    assert not problems, "\n".join(map(str, problems))


async def test_every_api_route_that_needs_a_key_is_in_the_route_table(api: Api) -> None:
    """Only the open paths (the login, the document itself) are added outside the table, so
    no /api/v1 handler runs before its key, permission and rate limit are checked."""
    declared = {(r.method, openapi_path(r.path)) for r in declared_routes(api.daemon.app)}
    outside = sorted(
        (method, template)
        for method, template in app_operations(api.daemon.app)
        if template.startswith(API_PREFIX)
        and template not in OPEN_PATHS
        and (method, template) not in declared
    )
    assert outside == []


async def test_document_and_app_routes_agree(api: Api, document: dict[str, Any]) -> None:
    served = app_operations(api.daemon.app)
    documented = documented_operations(document)
    assert served - documented == set(), "routes missing from openapi.yaml"
    assert documented - served <= PENDING | FLEET_ONLY, "documented routes nobody serves"
    served_json = await api.get("/api/v1/openapi.json", key=None)
    assert served_json.body == document


# ------------------------------------------------------------------ real answers


async def test_real_answers_match_the_document(api: Api, document: dict[str, Any]) -> None:
    training_key, plain_key = api.key("training"), api.key("preprocessing")
    job = await api.parked_job("doc-task")
    calls: list[tuple[str, str, str, str | None, Any]] = [
        ("GET", "/healthz", "/healthz", None, None),
        ("GET", "/metrics", "/metrics", None, None),
        ("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", None, None),
        ("GET", "/api/v1/system/overview", "/api/v1/system/overview", plain_key, None),
        ("GET", "/api/v1/system/overview", "/api/v1/system/overview", None, None),
        ("GET", "/api/v1/gpu/status", "/api/v1/gpu/status", plain_key, None),
        ("GET", "/api/v1/gpu/available", "/api/v1/gpu/available?task_type=training", None, None),
        ("POST", "/api/v1/training/start", "/api/v1/training/start", training_key, job),
        ("POST", "/api/v1/training/start", "/api/v1/training/start", training_key, job),
        ("POST", "/api/v1/training/start", "/api/v1/training/start", training_key, {"x": 1}),
        ("POST", "/api/v1/training/start", "/api/v1/training/start", plain_key, job),
        ("GET", "/api/v1/training/list", "/api/v1/training/list?limit=5", plain_key, None),
        ("GET", "/api/v1/training/{task_id}", "/api/v1/training/doc-task", plain_key, None),
        ("GET", "/api/v1/training/{task_id}", "/api/v1/training/nope", plain_key, None),
        ("GET", "/api/v1/training/{task_id}/progress", "/api/v1/training/doc-task/progress",
         plain_key, None),
        ("GET", "/api/v1/training/{task_id}/metrics", "/api/v1/training/doc-task/metrics",
         plain_key, None),
        ("POST", "/api/v1/training/stop/{task_id}", "/api/v1/training/stop/doc-task",
         training_key, {"force": True}),
        ("POST", "/api/v1/training/{task_id}/resume", "/api/v1/training/doc-task/resume",
         training_key, None),
        ("POST", "/api/v1/auth/generate-key", "/api/v1/auth/generate-key", "__admin__",
         {"user_id": "u", "permissions": ["training"], "expire_days": 3}),
        ("POST", "/api/v1/auth/generate-key", "/api/v1/auth/generate-key", "__admin__",
         {"user_id": "u"}),
        ("POST", "/api/v1/auth/generate-key", "/api/v1/auth/generate-key", plain_key, {}),
    ]  # fmt: skip
    seen: set[tuple[str, str, int]] = set()
    for method, template, path, key, body in calls:
        if key == "__admin__":
            key = api.key("admin")
        reply = await api.call(method, path, key=key, json=body)
        check_reply(document, method, template, reply)
        seen.add((method, template, reply.status))
    statuses = {status for _, _, status in seen}
    assert {200, 201, 401, 403, 404, 409, 422} <= statuses  # the calls did reach those answers


async def test_429_answer_matches_the_document(api: Api, document: dict[str, Any]) -> None:
    api.daemon.rate_limiter.set_limits(dataclasses.replace(UNLIMITED, gpu=RateLimit(1, 60)))
    first = await api.get("/api/v1/gpu/status")
    check_reply(document, "GET", "/api/v1/gpu/status", first)
    refused = await api.get("/api/v1/gpu/status")
    assert refused.status == 429
    check_reply(document, "GET", "/api/v1/gpu/status", refused)


async def test_bad_query_parameters_get_a_documented_400(
    api: Api, document: dict[str, Any]
) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("doc-task"))
    served = app_operations(api.daemon.app)
    tried = 0
    for method, template in sorted(served):
        operation = document["paths"][template][method.lower()]
        for parameter in operation.get("parameters", []):
            parameter = resolve(document, parameter)
            bad = bad_value(parameter["schema"])
            if parameter["in"] != "query" or bad is None:
                continue
            path = template.replace("{task_id}", "doc-task") + f"?{parameter['name']}={bad}"
            reply = await api.call(method, path, json=None)
            assert reply.status == 400, (method, path, reply.body)
            check_reply(document, method, template, reply)
            tried += 1
    assert tried >= 8


def bad_value(schema: dict[str, Any]) -> str | None:
    """A value the parameter's schema refuses, or None when any text is valid."""
    if "$ref" in schema or "enum" in schema:
        return "not-a-choice"
    if schema.get("type") == "integer":
        return "1.5x"
    if schema.get("type") == "boolean":
        return "maybe"
    return None


# ------------------------------------------------------------------ parameters the code reads

QUERY_HELPERS = {"query_int": "integer", "query_bool": "boolean", "query_choice": "string"}


@dataclasses.dataclass
class Reads:
    """What one function reads of a request: query parameters (name -> the schema its
    parsing implies) and headers, and the functions of its module it calls."""

    query: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    headers: set[str] = dataclasses.field(default_factory=set)
    calls: set[str] = dataclasses.field(default_factory=set)


def _literal(module: ModuleType, node: ast.expr) -> Any:
    if isinstance(node, ast.Name):
        return getattr(module, node.id)
    return ast.literal_eval(node)


def _implied_schema(module: ModuleType, call: ast.Call, helper: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": QUERY_HELPERS[helper]}
    keywords = {k.arg: k.value for k in call.keywords}
    if helper == "query_int":
        for position, bound in ((3, "minimum"), (4, "maximum")):
            node = keywords.get(bound) or (
                call.args[position] if len(call.args) > position else None
            )
            if node is not None and _literal(module, node) is not None:
                schema[bound] = _literal(module, node)
    if helper == "query_choice":
        schema["enum"] = sorted(_literal(module, keywords.get("choices") or call.args[2]))
    return schema


def _is_request_attribute(node: ast.expr, attribute: str) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == attribute


def reads_by_function(module: ModuleType) -> dict[str, Reads]:
    """Every function (and method) of a module, by name, and what it reads."""
    found: dict[str, Reads] = {}
    for function in ast.walk(ast.parse(inspect.getsource(module))):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        reads = found.setdefault(function.name, Reads())
        for node in ast.walk(function):
            if (
                isinstance(node, ast.Subscript)
                and _is_request_attribute(node.value, "query")
                and isinstance(node.slice, ast.Constant)
            ):
                reads.query.setdefault(node.slice.value, {"type": "string"})
            if not isinstance(node, ast.Call):
                continue
            callee = node.func
            if isinstance(callee, ast.Name):
                reads.calls.add(callee.id)
                if callee.id in QUERY_HELPERS and len(node.args) >= 2:
                    name = ast.literal_eval(node.args[1])
                    reads.query[name] = _implied_schema(module, node, callee.id)
            elif isinstance(callee, ast.Attribute) and callee.attr == "get" and node.args:
                if not isinstance(node.args[0], ast.Constant):
                    continue  # e.g. echoing parameters read elsewhere by name
                if _is_request_attribute(callee.value, "query"):
                    reads.query.setdefault(node.args[0].value, {"type": "string"})
                elif _is_request_attribute(callee.value, "headers"):
                    reads.headers.add(node.args[0].value)
    return found


def handler_reads(handler: Any) -> Reads:
    """What a route handler reads, with the functions of its module it calls, transitively."""
    functions = reads_by_function(inspect.getmodule(handler))  # type: ignore[arg-type]
    total, todo, seen = Reads(), [handler.__name__], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for parameter, schema in functions[name].query.items():
            total.query.setdefault(parameter, schema)
        total.headers |= functions[name].headers
        todo.extend(functions[name].calls)
    return total


def test_the_reader_finds_what_a_handler_reads() -> None:
    reads = handler_reads(logs_routes.search_logs)
    assert reads.query["ignore_case"] == {"type": "boolean"}
    assert reads.query["limit"] == {"type": "integer", "minimum": 1, "maximum": 10_000}
    assert reads.query["level"]["enum"] == sorted(LEVELS)
    assert reads.query["keyword"] == {"type": "string"}
    assert "Last-Event-ID" in handler_reads(stream_routes.stream_logs).headers


async def test_every_parameter_the_code_reads_is_documented_and_no_other(
    api: Api, document: dict[str, Any]
) -> None:
    """Query parameters and headers each handler reads, found in its source (and in the
    functions of its module it calls; the key of WebSocket routes in the auth middleware),
    against the operation's parameters; and the bounds and choices the code enforces
    against the parameter's schema."""
    middleware_reads = handler_reads(Authenticator.middleware)
    checked, problems = 0, []
    for route in api.daemon.app.router.routes():
        served = route_operation(route)
        if served is None:
            continue
        template = served[1]
        operation = document["paths"][template][route.method.lower()]
        parameters = [resolve(document, p) for p in operation.get("parameters", [])]
        documented = {(p["in"], p["name"]): p for p in parameters}
        reads = handler_reads(route.handler)
        query = dict(reads.query)
        if template.startswith(WS_PREFIX):
            query.update(middleware_reads.query)
        wanted = {("query", name) for name in query} | {
            ("header", name) for name in reads.headers - {"Authorization"}
        }
        have = {key for key in documented if key[0] in ("query", "header")}
        if wanted != have:
            problems.append((route.method, template, "read, not documented", wanted - have))
            problems.append((route.method, template, "documented, not read", have - wanted))
        for name, implied in query.items():
            if ("query", name) not in documented:
                continue
            schema = resolve(document, documented[("query", name)]["schema"])
            for facet, value in implied.items():
                written = sorted(schema.get(facet, [])) if facet == "enum" else schema.get(facet)
                if written != value:
                    problems.append((route.method, template, name, facet, written, value))
            checked += 1
    problems = [p for p in problems if p[-1]]
    assert not problems, "\n".join(map(str, problems))
    assert checked >= 25
