"""GET /api/v1/folders, the submit page's dataset picker: folders under the data roots with
their image, video and caption counts, bounded, and confined to the roots (``..`` and
symlinks leading out are refused) on a real daemon."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from dpd.preprocess.folders import MAX_FILES, MAX_FOLDERS
from tests.http.conftest import Api


async def folders(api: Api, path: str | Path | None = None, key: str | None = None):
    query = "" if path is None else f"?path={quote(str(path))}"
    if key is None:
        return await api.get(f"/api/v1/folders{query}")
    return await api.get(f"/api/v1/folders{query}", key=key)


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


async def test_without_a_path_it_lists_the_data_roots(api: Api) -> None:
    reply = await folders(api)
    assert reply.status == 200, reply.body
    data = reply.body["data"]
    assert data["path"] is None and data["parent"] is None
    assert [f["path"] for f in data["folders"]] == [str(api.data_root.resolve())]
    assert data["folders"][0]["counts"]["subfolders"] >= 2  # datasets/ and models/


async def test_subfolders_with_their_image_video_and_caption_counts(api: Api) -> None:
    datasets = api.data_root / "datasets"  # holds cats/: 4 .png and 4 .txt
    touch(datasets / "clips", "a.mp4", "b.MOV", "a.txt", "b.txt", "notes.md")
    touch(datasets / "mixed", "x.jpg", "y.webp", "z.mkv", "x.txt")
    (datasets / "mixed" / "inner").mkdir()
    (datasets / "readme.txt").write_text("not a folder")
    reply = await folders(api, datasets)
    assert reply.status == 200, reply.body
    data = reply.body["data"]
    assert data["path"] == str(datasets.resolve())
    assert data["parent"] == str(api.data_root.resolve())
    assert data["truncated"] is False
    by_name = {f["name"]: f for f in data["folders"]}
    assert list(by_name) == ["cats", "clips", "mixed"]  # sorted; the file is no folder
    assert by_name["cats"]["counts"] == {
        "images": 4,
        "videos": 0,
        "captions": 4,
        "subfolders": 0,
        "capped": False,
    }
    assert by_name["clips"]["counts"] == {
        "images": 0,
        "videos": 2,
        "captions": 2,
        "subfolders": 0,
        "capped": False,
    }
    assert by_name["mixed"]["counts"] == {
        "images": 2,
        "videos": 1,
        "captions": 1,
        "subfolders": 1,
        "capped": False,
    }
    assert by_name["clips"]["path"] == str((datasets / "clips").resolve())
    # the root itself has no parent to go up to
    top = await folders(api, api.data_root)
    assert top.status == 200 and top.body["data"]["parent"] is None


async def test_the_listing_and_the_counts_are_capped_and_say_so(api: Api) -> None:
    many = api.data_root / "many"
    for index in range(MAX_FOLDERS + 1):
        (many / f"d{index:04}").mkdir(parents=True)
    reply = await folders(api, many)
    assert reply.status == 200, reply.body
    data = reply.body["data"]
    assert data["truncated"] is True and data["max_folders"] == MAX_FOLDERS
    assert len(data["folders"]) == MAX_FOLDERS

    full = api.data_root / "full" / "frames"
    touch(full, *(f"f{index:05}.png" for index in range(MAX_FILES + 1)))
    reply = await folders(api, full.parent)
    counts = reply.body["data"]["folders"][0]["counts"]
    assert counts["capped"] is True and counts["images"] == MAX_FILES
    assert reply.body["data"]["truncated"] is False


async def test_dot_dot_relative_and_outside_paths_are_400(api: Api, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "secret", "a.png")
    root = api.data_root
    for path in (
        f"{root}/datasets/../../outside",
        f"{root}/datasets/..",
        f"{root}/..",
        "datasets/cats",
        str(outside),
        "/",
    ):
        reply = await folders(api, path)
        assert reply.status == 400, (path, reply.body)
        assert reply.body["code"] == 400 and reply.body["data"]["path"] == path


async def test_a_symlink_out_of_the_root_is_refused_and_not_listed(
    api: Api, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    touch(outside / "secret", "a.png", "a.txt")
    link = api.data_root / "datasets" / "escape"
    link.symlink_to(outside, target_is_directory=True)
    inside = api.data_root / "datasets" / "alias"
    inside.symlink_to(api.data_root / "datasets" / "cats", target_is_directory=True)
    reply = await folders(api, link)
    assert reply.status == 400, reply.body
    assert "outside every data root" in reply.body["message"]
    assert (await folders(api, link / "secret")).status == 400
    listing = await folders(api, api.data_root / "datasets")
    names = {f["name"]: f["path"] for f in listing.body["data"]["folders"]}
    assert "escape" not in names
    # a link that stays inside the roots is listed, under its real path
    assert names["alias"] == str((api.data_root / "datasets" / "cats").resolve())


async def test_missing_paths_and_files_are_404_and_a_key_is_needed(api: Api) -> None:
    assert (await folders(api, api.data_root / "nope")).status == 404
    file = api.data_root / "models" / "sdxl.safetensors"
    reply = await folders(api, file)
    assert reply.status == 404 and reply.body["code"] == 404
    reader = api.key("preprocessing")  # a read route: any valid key
    assert (await folders(api, api.data_root, key=reader)).status == 200
    anonymous = await api.call("GET", "/api/v1/folders", key=None)
    assert anonymous.status == 401
