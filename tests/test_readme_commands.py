"""The README's two commands at the top hold on a bare Debian machine for root without sudo and
for a user with sudo: their package-installing part is run by bash with stand-ins for apt-get
and sudo (which record how they were called) and nothing else on PATH."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SETUP_END = " && python3 -m venv .venv"


def readme_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def fake_bin(tmp_path: Path, with_sudo: bool) -> tuple[Path, Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(parents=True)
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "apt-get $*" >> {log}\n')
    (bin_dir / "apt-get").chmod(0o755)
    if with_sudo:
        (bin_dir / "sudo").write_text(f'#!/bin/sh\necho "sudo" >> {log}\nexec "$@"\n')
        (bin_dir / "sudo").chmod(0o755)
    return bin_dir, log


def test_there_are_two_commands_a_demo_and_the_tests() -> None:
    demo, tests = readme_commands()
    assert demo.endswith("pip install -e . && dpd demo")
    assert tests.endswith("pip install -e '.[test]' && python -m pytest -q")
    assert "nats-server" in tests and "ffmpeg" in tests


@pytest.mark.parametrize("with_sudo", [False, True], ids=["root-without-sudo", "user-with-sudo"])
def test_the_package_step_runs_with_or_without_sudo(tmp_path: Path, with_sudo: bool) -> None:
    for number, command in enumerate(readme_commands()):
        assert SETUP_END in command, command
        setup = command.split(SETUP_END, 1)[0]
        bin_dir, log = fake_bin(tmp_path / str(number), with_sudo)
        result = subprocess.run(
            ["/bin/bash", "-c", setup], env={"PATH": str(bin_dir)}, capture_output=True,
            text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, (command, result.stderr)
        calls = log.read_text().splitlines()
        installs = [c for c in calls if c.startswith("apt-get install")]
        assert "apt-get update" in calls and installs, calls
        assert "python3-venv" in installs[0]  # a bare Debian has no venv module
        assert ("sudo" in calls) is with_sudo, calls
