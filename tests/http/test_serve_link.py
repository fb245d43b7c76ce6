"""A real ``dpd serve`` prints a one-time login link when it starts (as Jupyter prints its
token URL); the link logs a browser in once, and the page it lands on is the dashboard."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path

from dpd.http.sessions import COOKIE
from tests.daemon_harness import DaemonProcess, wait_for


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def follow_once(url: str) -> tuple[int, str, str]:
    """(status, Location, cookie value) of one request, redirects not followed."""
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(url, timeout=5)
    except urllib.error.HTTPError as err:
        jar: SimpleCookie = SimpleCookie()
        for header in err.headers.get_all("Set-Cookie") or []:
            jar.load(header)
        cookie = jar[COOKIE].value if COOKIE in jar else ""
        return err.code, err.headers.get("Location", ""), cookie
    raise AssertionError("expected a redirect")


def test_serve_prints_a_one_time_login_link(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, {"auth": {"enabled": True, "bootstrap_key": "k" * 40}})
    try:
        daemon.start()
        pattern = re.compile(rf"dashboard: (http://127\.0\.0\.1:{daemon.port}/login\?token=\S+)")
        link = wait_for(lambda: pattern.search(daemon.log()), timeout=10).group(1)
        status, location, cookie = follow_once(link)
        assert (status, location) == (303, "/") and cookie
        request = urllib.request.Request(
            f"{daemon.url}/api/v1/auth/session", headers={"Cookie": f"{COOKIE}={cookie}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert b'"admin"' in response.read()
        assert follow_once(link)[:2] == (303, "/#/login")  # used up
        with urllib.request.urlopen(f"{daemon.url}/", timeout=5) as page:
            assert page.status == 200 and "Content-Security-Policy" in page.headers
    finally:
        daemon.stop()


def test_under_systemd_no_login_token_reaches_the_journal(tmp_path: Path) -> None:
    """A service's log is the journal, which other users may read: there the address goes
    without a token (``dpd open`` logs the local user in instead)."""
    daemon = DaemonProcess(tmp_path, {"auth": {"enabled": True, "bootstrap_key": "k" * 40}})
    daemon.env["INVOCATION_ID"] = "0" * 32  # what systemd sets for a unit's processes
    try:
        daemon.start()
        line = wait_for(lambda: re.search(r"dashboard: .*", daemon.log()), timeout=10).group(0)
        assert line == f"dashboard: http://127.0.0.1:{daemon.port}/ (dpd open logs you in)"
        assert "token=" not in daemon.log()
    finally:
        daemon.stop()
