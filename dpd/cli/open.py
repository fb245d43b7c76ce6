"""``dpd open``: open the dashboard in a browser, already logged in.

It asks the daemon for a one-time login link (``POST /api/v1/auth/login-link``) with an admin
key and hands the link to the desktop's browser (``webbrowser``), so the local user never
copies a key into a form. The key: ``--key``/``DPD_API_KEY``, else the local admin key
(``dpd.client.local_key``, where this installation has it). With auth disabled no key is
needed and the plain address opens. ``--print`` only prints the link (for another machine's
browser, or an SSH session).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import webbrowser

from dpd.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE
from dpd.client import DEFAULT_URL, DpdClient, DpdError, UnauthorizedError, UnavailableError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("open", help="open the web dashboard, logged in")
    parser.add_argument("--url", default=os.environ.get("DPD_URL", DEFAULT_URL),
                        help="daemon address (DPD_URL)")  # fmt: skip
    parser.add_argument("--key", default=os.environ.get("DPD_API_KEY"),
                        help="admin key (DPD_API_KEY; default: the local admin key)")  # fmt: skip
    parser.add_argument("--print", dest="print_only", action="store_true",
                        help="print the link instead of opening a browser")  # fmt: skip
    parser.set_defaults(handler=run)


def local_key(url: str) -> str | None:
    """The local admin key for ``url`` when this installation can find one."""
    try:
        module = importlib.import_module("dpd.client.local_key")
    except ImportError:
        return None
    found = module.find_local_key(url)
    return str(found) if found else None


def dashboard_link(url: str, key: str | None) -> str:
    client = DpdClient(url, key)
    if key is None:
        session = client.request("GET", "/auth/session")  # answers 200 only with auth off
        if session["data"].get("auth_enabled") is False:
            return client.base_url + "/"
    answer = client.request("POST", "/auth/login-link")
    return str(answer["data"]["url"])


def run(args: argparse.Namespace) -> int:
    key = args.key or local_key(args.url)
    try:
        link = dashboard_link(args.url, key)
    except UnavailableError as err:
        print(f"dpd: {err.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except UnauthorizedError:
        print("dpd: the daemon needs an admin key: pass --key or set DPD_API_KEY",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    except DpdError as err:
        print(f"dpd: error {err.code}: {err.message}", file=sys.stderr)
        return EXIT_FAILURE
    print(link)
    if not args.print_only and not webbrowser.open(link):
        print("dpd: no browser could be started; open the link above", file=sys.stderr)
    return EXIT_OK
