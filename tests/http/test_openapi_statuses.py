"""Every status a route can answer is in the OpenAPI document: found in the route table's
checks (``dpd.http.routing``: a key, 401; a permission, 403; a rate class, 429) and in each
handler's source (and the functions of its module it calls, transitively) by the calls that
answer them: a permission check (401, 403), a rate limit (429), reading a body (400, 413),
parsing query parameters or Last-Event-ID (400), validating a job (422), and every
``dpd.errors`` class raised by name."""

from __future__ import annotations

import ast
import inspect
from types import ModuleType
from typing import Any

from dpd import errors
from dpd.http.openapi import load_document, openapi_path, route_operation
from dpd.http.routing import Route, declared_routes
from tests.http.conftest import Api

CALLS_ANSWER: dict[str, set[int]] = {
    "require_permission": {401, 403},
    "principal": {401},
    "rate_limit": {429},
    "parse_json": {400, 413},
    "json_body": {400, 413},
    "parse_job_document": {400, 413},
    "read": {400, 413},
    "json": {400, 413},
    "multipart": {400, 413},
    "post": {400, 413},
    "query_int": {400},
    "query_bool": {400},
    "query_choice": {400},
    "parse_cursor": {400},
    "parse_kinds": {400},
    "validate_job": {422},
}
ERROR_CODES: dict[str, int] = {
    name: cls.code
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.DpdError)
}


def _callee_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _is_request_method(call: ast.Call) -> bool:
    """``request.read()`` and the like: a method called on a name ``request``."""
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "request"
    )


def statuses_by_function(module: ModuleType) -> dict[str, tuple[set[int], set[str]]]:
    """For each function of ``module``: (statuses it answers itself, names it calls)."""
    found: dict[str, tuple[set[int], set[str]]] = {}
    for function in ast.walk(ast.parse(inspect.getsource(module))):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        statuses: set[int] = set()
        calls: set[str] = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = _callee_name(node.exc)
                if name in ERROR_CODES:
                    statuses.add(ERROR_CODES[name])
            if not isinstance(node, ast.Call) or (name := _callee_name(node)) is None:
                continue
            calls.add(name)
            body_reader = name in ("read", "json", "multipart", "post")
            if name in CALLS_ANSWER and (not body_reader or _is_request_method(node)):
                statuses |= CALLS_ANSWER[name]
        found[function.name] = (statuses, calls)
    return found


def handler_statuses(handler: Any) -> set[int]:
    functions = statuses_by_function(inspect.getmodule(handler))  # type: ignore[arg-type]
    total: set[int] = set()
    todo, seen = [handler.__name__], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        statuses, calls = functions[name]
        total |= statuses
        todo.extend(calls)
    return total


def table_statuses(route: Route) -> set[int]:
    """What the checks ``add_routes`` runs before the handler can answer."""
    return {401} | ({403} if route.permission else set()) | ({429} if route.rate else set())


def test_the_finder_sees_permissions_bodies_and_raised_errors() -> None:
    from dpd.http.routes import keys, preprocess, stream, training

    assert handler_statuses(keys.generate_key) >= {400, 413, 422}
    assert table_statuses(keys.ROUTES[0]) == {401, 403, 429}
    assert handler_statuses(preprocess.upload) >= {400, 413, 422}
    assert 400 in handler_statuses(stream.stream_logs)
    assert 401 in handler_statuses(training.start_training)  # principal(request)


async def test_every_status_a_route_can_answer_is_documented(api: Api) -> None:
    document = load_document()
    checks = {
        (r.method, openapi_path(r.path)): table_statuses(r) for r in declared_routes(api.daemon.app)
    }
    missing = []
    checked = 0
    for route in api.daemon.app.router.routes():
        served = route_operation(route)
        if served is None or not inspect.isfunction(route.handler):
            continue
        method, template = served
        documented = set(document["paths"][template][method.lower()]["responses"])
        statuses = handler_statuses(route.handler) | checks.get(served, set())
        wanted = {str(code) for code in statuses}
        if wanted - documented:
            missing.append(f"{method} {template}: {sorted(wanted - documented)}")
        checked += 1
    assert not missing, "\n".join(missing)
    assert checked >= 20
