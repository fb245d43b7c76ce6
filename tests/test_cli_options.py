"""The ``dpd`` command line as people type it: a command group's options before or after its
subcommand, on every group; the man page and the shell completion cover every command."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import shtab
import tomlkit

from dpd.cli import build_parser
from tests.packaging.conftest import DEB


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and subcommand: (("keys", "create"), its parser), ..."""
    for name, sub in subparsers_of(parser).items():
        yield (*path, name), sub
        yield from commands(sub, (*path, name))


def long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_every_group_option_is_accepted_by_each_of_its_subcommands() -> None:
    groups = 0
    for path, parser in commands(build_parser()):
        children = subparsers_of(parser)
        if not children:
            continue
        groups += 1
        for name, child in children.items():
            missing = long_options(parser) - long_options(child)
            assert not missing, f"dpd {' '.join(path)} {name} refuses {sorted(missing)}"
    assert groups >= 2  # keys, models


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "--config", "/a.toml", "create", "--permission", "admin"],
        ["keys", "create", "--permission", "admin", "--config", "/a.toml"],
        ["keys", "list", "--config", "/a.toml"],
        ["keys", "--config", "/a.toml", "revoke", "key_1"],
    ],
)
def test_keys_config_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == "/a.toml"


def test_a_value_before_the_subcommand_survives_its_defaults() -> None:
    parse = build_parser().parse_args
    before = parse(["models", "--json", "--url", "http://127.0.0.1:1", "--key", "k", "pull", "m"])
    assert (before.json, before.url, before.key) == (True, "http://127.0.0.1:1", "k")
    after = parse(["models", "pull", "m", "--json", "--url", "http://127.0.0.1:2"])
    assert (after.json, after.url) == (True, "http://127.0.0.1:2")
    plain = parse(["models", "pull", "m"])
    assert plain.json is False and plain.key is None and plain.url
    for sub in (["downloads"], ["cancel", "d1"]):
        assert parse(["models", "--json", *sub]).json is True
        assert parse(["models", *sub, "--json"]).json is True
    assert parse(["keys", "create", "--permission", "admin"]).config is None


def test_keys_create_with_config_last_as_a_real_command(tmp_path: Path) -> None:
    config = tmp_path / "dpd.toml"
    config.write_text(tomlkit.dumps({"daemon": {"state_dir": str(tmp_path / "state")}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPD_", "API_"))}
    created = subprocess.run(
        [sys.executable, "-m", "dpd", "keys", "create", "--permission", "admin", "--json",
         "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["key_id"]
    assert key_id in (tmp_path / "state" / "keys.json").read_text()


# ------------------------------------------------------------------ man page, completion


def man_sections(text: str) -> dict[tuple[str, ...], str]:
    """``.SS dpd keys create`` headings -> the text up to the next heading."""
    sections: dict[tuple[str, ...], str] = {}
    current: tuple[str, ...] | None = None
    for line in text.splitlines():
        heading = re.fullmatch(r"\.SS (?:\"|)dpd ([a-z -]+?)(?:\"|)", line.replace("\\-", "-"))
        if heading:
            current = tuple(heading.group(1).split())
            sections[current] = ""
        elif line.startswith(".SH"):
            current = None
        elif current is not None:
            sections[current] += line.replace("\\-", "-") + "\n"
    return sections


def test_the_man_page_covers_every_command_and_its_options() -> None:
    sections = man_sections((DEB / "dpd.1").read_text())
    parsed = dict(commands(build_parser()))
    assert set(sections) == set(parsed), "man page and parser disagree on the commands"
    for path, parser in parsed.items():
        for option in long_options(parser):
            assert option in sections[path], f"dpd.1: dpd {' '.join(path)} lacks {option}"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_know_every_command(shell: str) -> None:
    script = shtab.complete(build_parser(), shell)
    for path, parser in commands(build_parser()):
        assert path[-1] in script, (shell, path)
        for option in long_options(parser):
            assert option in script, (shell, path, option)
    assert "_shtab_compgen_files" in script or "_files" in script  # --config, job files
