"""The vendored libraries are the pinned releases dpd/web/vendor.sh fetched, with licences."""

from __future__ import annotations

import hashlib
from pathlib import Path

VENDOR = Path(__file__).parents[2] / "dpd" / "web" / "static" / "vendor"


def test_vendored_files_match_their_recorded_hashes_and_carry_licences() -> None:
    pins: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for line in (VENDOR / "VERSIONS").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        first, second = line.split()
        if len(first) == 64:
            hashes[second] = first
        else:
            pins[first] = second
    assert pins == {"preact": "11.2.0", "htm": "3.1.1", "uplot": "1.6.32"}
    shipped = {"preact.mjs", "hooks.mjs", "htm.mjs", "uPlot.iife.min.js", "uPlot.min.css"}
    assert set(hashes) == shipped
    for name, digest in hashes.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    licences = {name: (VENDOR / f"LICENSE.{name}").read_text() for name in pins}
    assert "MIT" in licences["preact"] or "Permission is hereby granted" in licences["preact"]
    assert "Permission is hereby granted" in licences["uplot"]
    assert "Apache License" in licences["htm"]
    # hooks import Preact by path: a bare "preact" specifier would not load in a browser
    assert 'from"./preact.mjs"' in (VENDOR / "hooks.mjs").read_text()
