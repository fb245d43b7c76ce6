"""``dpd open``: open the dashboard in a browser, already logged in.

It asks the daemon for a one-time login link (``POST /api/v1/auth/login-link``) with an admin
key and hands the link to the desktop's browser (``webbrowser``), so the local user never
copies a key into a form. The key is found as for every remote command (``--key``,
``DPD_API_KEY``, else the local daemon's key file: ``dpd.cli.connection.credentials``).
With auth disabled no key is needed and the plain address opens. ``--print`` only prints the
link (for another machine's browser, or an SSH session).
"""

from __future__ import annotations

import argparse
import sys
import webbrowser

from dpd.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE
from dpd.cli.connection import add_connection_options, auth_hint, credentials
from dpd.client import DpdClient, DpdError, UnavailableError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("open", help="open the web dashboard, logged in")
    add_connection_options(parser)
    parser.add_argument("--print", dest="print_only", action="store_true",
                        help="print the link instead of opening a browser")  # fmt: skip
    parser.set_defaults(handler=run)


def dashboard_link(url: str, key: str | None) -> str:
    client = DpdClient(url, key)
    if key is None:
        session = client.request("GET", "/auth/session")  # answers 200 only with auth off
        if session["data"].get("auth_enabled") is False:
            return client.base_url + "/"
    answer = client.request("POST", "/auth/login-link")
    return str(answer["data"]["url"])


def run(args: argparse.Namespace) -> int:
    who = credentials(args)
    try:
        link = dashboard_link(who.url, who.key)
    except UnavailableError as err:
        print(f"dpd: {err.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except DpdError as err:
        print(f"dpd: error {err.code}: {err.message}", file=sys.stderr)
        hint = auth_hint(err.code, err.message, who)
        if hint:
            print(hint, file=sys.stderr)
        return EXIT_FAILURE
    print(link)
    if not args.print_only and not webbrowser.open(link):
        print("dpd: no browser could be started; open the link above", file=sys.stderr)
    return EXIT_OK
