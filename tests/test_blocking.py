"""The blocking-call guard (tests/blocking.py, wired in tests/conftest.py) does fail a test:
a blocking call dpd's code makes on the loop raises and is recorded, one in a request handler
fails the test even when the error middleware turned it into a 500, and calls from worker
threads or from synchronous tests pass."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dpd.spool.atomic import write_atomic
from tests.blocking import BlockingError, Detected

ROOT = Path(__file__).resolve().parent.parent


async def test_a_blocking_call_through_dpd_on_the_loop_raises_and_is_recorded(
    tmp_path: Path, no_blocking_calls_on_the_loop: Detected
) -> None:
    with pytest.raises(BlockingError):
        write_atomic(tmp_path / "x", b"data")
    assert len(no_blocking_calls_on_the_loop.calls) == 1
    no_blocking_calls_on_the_loop.calls.clear()  # expected here: do not fail this test


async def test_the_same_call_in_a_worker_thread_is_fine(tmp_path: Path) -> None:
    await asyncio.to_thread(write_atomic, tmp_path / "x", b"data")
    assert (tmp_path / "x").read_bytes() == b"data"


def test_a_synchronous_test_may_block(tmp_path: Path) -> None:
    write_atomic(tmp_path / "x", b"data")


INNER_TESTS = """
import asyncio
import time

from aiohttp import web

from dpd.http.middlewares import error_middleware


def app_with(handler):
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handler)
    return app


async def test_handler_that_blocks(aiohttp_client):
    async def sleepy(request):
        time.sleep(0.01)
        return web.json_response({})

    client = await aiohttp_client(app_with(sleepy))
    await client.get("/")  # answered 500 by the error middleware; status not checked


async def test_handler_that_waits(aiohttp_client):
    async def patient(request):
        await asyncio.sleep(0.01)
        return web.json_response({})

    client = await aiohttp_client(app_with(patient))
    assert (await client.get("/")).status == 200
"""


def test_a_blocking_call_in_a_request_handler_fails_its_test(tmp_path: Path) -> None:
    """A suite of two tests in a subprocess, under this suite's fixture: the handler that
    sleeps fails its test though nothing in the test looks at the answer."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import no_blocking_calls_on_the_loop  # noqa: F401\n"
    )
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
         "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    # the failing test's body passed; it fails at its end, where the guard looks
    assert "2 passed, 1 error" in done.stdout, done.stdout
    assert "ERROR test_inner.py::test_handler_that_blocks" in done.stdout
    assert "test_inner.py::test_handler_that_waits" not in done.stdout
    assert "Blocking call to time.sleep" in done.stdout
