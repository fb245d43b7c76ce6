"""A stand-in daemon for the restart test: starts one download and runs until killed.

Usage: python download_worker.py TMP_PATH HUB_URL MODEL_ID COMPONENT
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from dpd.models.catalog import parse_catalog
from dpd.models.downloads import DownloadManager
from dpd.models.hub import HubClient
from tests.models.conftest import CATALOG


async def main(tmp_path: Path, hub_url: str, model_id: str, component: str) -> None:
    manager = DownloadManager(
        parse_catalog(CATALOG), HubClient(hub_url, None), tmp_path / "models", tmp_path / "state"
    )
    await manager.start()
    started = await manager.submit({"model_id": model_id, "components": [component]})
    print(started["download_id"], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
