"""The fleet-mode routes (``dpd.http.routes.fleet``) against the OpenAPI document: served only
with ``[fleet]`` enabled, so tests/http/test_openapi.py exempts them and this test holds them
to the same rules (documented, 403 exactly when a permission is needed, 429 exactly when
rate-limited, 401 and 500 documented)."""

from __future__ import annotations

from dpd.http.openapi import documented_operations, load_document, openapi_path
from dpd.http.routes import fleet


def test_every_fleet_route_is_documented_with_its_permission_and_rate() -> None:
    document = load_document()
    documented = documented_operations(document)
    fleet_paths = {p for _, p in documented if p.startswith("/api/v1/fleet/")}
    served = {(r.method, openapi_path(r.path)) for r in fleet.ROUTES}
    assert served <= documented
    assert fleet_paths == {p for _, p in served}, "documented fleet paths nobody serves"
    for route in fleet.ROUTES:
        responses = document["paths"][openapi_path(route.path)][route.method.lower()]["responses"]
        assert ("403" in responses) == (route.permission is not None), route
        assert ("429" in responses) == (route.rate is not None), route
        assert "401" in responses and "500" in responses, route


def test_the_operators_writes_need_the_admin_permission() -> None:
    writes = {openapi_path(r.path): r.permission for r in fleet.ROUTES if r.method == "POST"}
    assert writes == {
        "/api/v1/fleet/nodes/{node}/drain": "admin",
        "/api/v1/fleet/nodes/{node}/down": "admin",
    }
