"""Fixtures every test folder may use. Folder-specific fixtures live in that folder's
conftest.py; fakes (the stand-in trainer, a fake NOTIFY_SOCKET...) live in tests/fakes/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def dpd_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated XDG state home, and no dpd variables leaking in from the caller."""
    for name in list(os.environ):
        if name.startswith("DPD_") or name in ("API_PORT", "API_HOST", "LOG_LEVEL"):
            monkeypatch.delenv(name, raising=False)
    state = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state
