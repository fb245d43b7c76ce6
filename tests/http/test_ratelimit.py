"""Rate limits: the pure window counter, then the headers and 429 through a real daemon."""

from __future__ import annotations

import dataclasses

from dpd.config import RateLimit
from dpd.http.ratelimit import ROUTE_CLASSES, WindowCounter
from tests.http.conftest import UNLIMITED, MakeApi

LIMITS = dataclasses.replace(UNLIMITED, gpu=RateLimit(3, 60), auth=RateLimit(2, 3600))


# ------------------------------------------------------------------ pure counting


def test_counts_down_then_refuses_until_the_window_ends() -> None:
    counter = WindowCounter(LIMITS)
    decisions = [counter.check("k1", "gpu", 1000.0 + i) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert {d.reset for d in decisions} == {1060.0}  # the first request opened the window
    assert decisions[3].retry_after == 57
    again = counter.check("k1", "gpu", 1060.0)
    assert again is not None and again.allowed and again.remaining == 2 and again.reset == 1120


def test_keys_and_route_classes_are_counted_apart() -> None:
    counter = WindowCounter(LIMITS)
    for _ in range(3):
        counter.check("k1", "gpu", 0.0)
    assert not counter.check("k1", "gpu", 1.0).allowed  # type: ignore[union-attr]
    assert counter.check("k2", "gpu", 1.0).allowed  # type: ignore[union-attr]
    assert counter.check("k1", "auth", 1.0).allowed  # type: ignore[union-attr]


def test_unlimited_and_unknown_classes_are_not_counted() -> None:
    counter = WindowCounter(LIMITS)
    assert counter.check("k1", "training", 0.0) is None
    assert counter.check("k1", "no-such-class", 0.0) is None
    assert len(counter) == 0


def test_set_limits_applies_new_limits() -> None:
    counter = WindowCounter(LIMITS)
    for _ in range(3):
        counter.check("k1", "gpu", 0.0)
    counter.set_limits(dataclasses.replace(LIMITS, gpu=RateLimit(0, 0)))
    assert counter.check("k1", "gpu", 1.0) is None
    counter.set_limits(dataclasses.replace(LIMITS, gpu=RateLimit(10, 60)))
    decision = counter.check("k1", "gpu", 2.0)
    assert decision is not None and decision.allowed and decision.limit == 10


def test_ended_windows_are_pruned() -> None:
    counter = WindowCounter(LIMITS)
    for i in range(2000):
        counter.check(f"key{i}", "gpu", float(i))
    assert len(counter) < 1100  # windows older than 60 s went away on the sweeps


def test_route_classes_are_the_config_tables_keys() -> None:
    assert ROUTE_CLASSES == ("auth", "training", "preprocess", "logs", "gpu")


def test_headers_carry_limit_remaining_reset() -> None:
    decision = WindowCounter(LIMITS).check("k", "gpu", 100.5)
    assert decision is not None
    assert decision.headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "2",
        "X-RateLimit-Reset": "161",
    }


# ------------------------------------------------------------------ through a daemon


async def test_headers_on_every_limited_response_and_429_past_the_limit(
    make_api: MakeApi,
) -> None:
    api = await make_api(ratelimit=LIMITS)
    key = api.key("training")
    replies = [await api.get("/api/v1/gpu/status", key) for _ in range(2)]
    # an error answer of a limited request carries the headers too
    bad = await api.get("/api/v1/gpu/available?min_memory=lots", key)
    assert [r.status for r in replies] == [200, 200] and bad.status == 400
    remaining = [r.headers["X-RateLimit-Remaining"] for r in [*replies, bad]]
    assert remaining == ["2", "1", "0"]
    assert all(r.headers["X-RateLimit-Limit"] == "3" for r in [*replies, bad])
    reset = int(replies[0].headers["X-RateLimit-Reset"])

    refused = await api.get("/api/v1/gpu/status", key)
    assert refused.status == 429
    assert refused.body["code"] == 429
    data = refused.body["data"]
    assert data["limit"] == 3 and data["remaining"] == 0
    assert 1 <= data["retry_after"] <= 60
    assert int(refused.headers["Retry-After"]) == data["retry_after"]
    assert int(refused.headers["X-RateLimit-Reset"]) == reset
    assert data["reset_time"].endswith("Z")

    other = await api.get("/api/v1/gpu/status", api.key("training"))
    assert other.status == 200 and other.headers["X-RateLimit-Remaining"] == "2"
    unlimited = await api.get("/api/v1/system/overview", key)
    assert unlimited.status == 200 and "X-RateLimit-Limit" not in unlimited.headers


async def test_a_new_window_lets_the_key_in_again(make_api: MakeApi) -> None:
    api = await make_api(ratelimit=LIMITS)
    now = [1_000_000.0]
    api.daemon.rate_limiter.clock = lambda: now[0]
    key = api.key("admin")
    body = {"user_id": "u", "permissions": ["training"]}
    statuses = [(await api.post("/api/v1/auth/generate-key", key, json=body)).status]
    statuses.append((await api.post("/api/v1/auth/generate-key", key, json=body)).status)
    statuses.append((await api.post("/api/v1/auth/generate-key", key, json=body)).status)
    assert statuses == [201, 201, 429]
    now[0] += 3600
    assert (await api.post("/api/v1/auth/generate-key", key, json=body)).status == 201


async def test_set_limits_takes_effect_on_a_running_daemon(make_api: MakeApi) -> None:
    api = await make_api()
    key = api.key("training")
    assert "X-RateLimit-Limit" not in (await api.get("/api/v1/gpu/status", key)).headers
    api.daemon.rate_limiter.set_limits(dataclasses.replace(UNLIMITED, gpu=RateLimit(1, 60)))
    assert (await api.get("/api/v1/gpu/status", key)).status == 200
    assert (await api.get("/api/v1/gpu/status", key)).status == 429


async def test_logins_are_limited_per_client_address_before_any_key_is_known(
    make_api: MakeApi,
) -> None:
    """The dashboard's login is open (no key yet): its attempts count in the ``auth`` class
    of the client's address, so keys cannot be guessed there at full speed. Past the limit a
    right key is refused too, until the window ends."""
    api = await make_api(ratelimit=LIMITS)
    good = api.key("training")
    login = "/api/v1/auth/session"
    first = await api.post(login, key=None, json={"api_key": "sk_guess1"})
    second = await api.post(login, key=None, json={"api_key": "sk_guess2"})
    assert [first.status, second.status] == [401, 401]
    assert second.headers["X-RateLimit-Remaining"] == "0"
    refused = await api.post(login, key=None, json={"api_key": good})
    assert refused.status == 429 and "Set-Cookie" not in refused.headers
    assert int(refused.headers["Retry-After"]) >= 1
    # the key's own auth window is its own: the address's attempts did not use it up
    listed = await api.get("/api/v1/auth/keys", api.key("admin"))
    assert listed.status == 200 and listed.headers["X-RateLimit-Remaining"] == "1"
