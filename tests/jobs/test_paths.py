"""Path checks against real files and symlinks in a temporary tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpd.jobs.paths import PathKind, PathRefused, check_path, is_under, safetensors_count


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "data"
    (root / "sets" / "a").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"w")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key").write_text("x")
    return {"root": root, "outside": outside, "tmp": tmp_path}


def refused(value: object, roots: list[Path], kind: PathKind = PathKind.ANY) -> str:
    with pytest.raises(PathRefused) as caught:
        check_path(value, roots, kind)
    return str(caught.value)


def test_accepts_files_and_directories_and_returns_the_real_path(tree: dict[str, Path]) -> None:
    root = tree["root"]
    assert check_path(str(root / "sets" / "a"), [root], PathKind.DIR) == str(root / "sets" / "a")
    assert check_path(str(root / "model.safetensors"), [root], PathKind.FILE) == str(
        root / "model.safetensors"
    )
    assert check_path(str(root), [root]) == str(root)
    assert check_path(str(root / "sets" / "." / "a" / ".." / "a"), [root]) == str(
        root / "sets" / "a"
    )


def test_kind_mismatches(tree: dict[str, Path]) -> None:
    root = tree["root"]
    assert "not a directory" in refused(str(root / "model.safetensors"), [root], PathKind.DIR)
    assert "not a regular file" in refused(str(root / "sets"), [root], PathKind.FILE)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (5, "expected a path string"),
        (None, "expected a path string"),
        ("", "must not be empty"),
        ("sets/a", "absolute"),
        ("/x" * 3000, "longer than"),
    ],
)
def test_malformed_values(tree: dict[str, Path], value: object, fragment: str) -> None:
    assert fragment in refused(value, [tree["root"]])


@pytest.mark.parametrize("char", ["\x00", "\n", "\r", "\x1b", "\x7f"])
def test_control_characters(tree: dict[str, Path], char: str) -> None:
    assert "control characters" in refused(f"{tree['root']}/a{char}b", [tree["root"]])


def test_missing_path(tree: dict[str, Path]) -> None:
    assert "does not exist" in refused(str(tree["root"] / "nope"), [tree["root"]])


def test_dot_dot_escape(tree: dict[str, Path]) -> None:
    root = tree["root"]
    message = refused(f"{root}/sets/../../secret/key", [root])
    assert "not under a data root" in message


def test_symlink_escape_is_refused(tree: dict[str, Path]) -> None:
    root = tree["root"]
    (root / "link").symlink_to(tree["outside"])
    (root / "sets" / "deep").symlink_to("../../secret/key")
    assert "outside every data root" in refused(str(root / "link"), [root])
    assert "outside every data root" in refused(str(root / "link" / "key"), [root])
    assert "outside every data root" in refused(str(root / "sets" / "deep"), [root])


def test_symlink_inside_the_root_resolves_to_its_target(tree: dict[str, Path]) -> None:
    root = tree["root"]
    (root / "alias").symlink_to(root / "sets" / "a")
    assert check_path(str(root / "alias"), [root], PathKind.DIR) == str(root / "sets" / "a")


def test_a_dangling_or_looping_symlink_does_not_exist(tree: dict[str, Path]) -> None:
    root = tree["root"]
    (root / "dangling").symlink_to(root / "gone")
    (root / "loop").symlink_to(root / "loop")
    assert "does not exist" in refused(str(root / "dangling"), [root])
    assert "does not exist" in refused(str(root / "loop"), [root])


def test_a_root_behind_a_symlink(tree: dict[str, Path]) -> None:
    link_root = tree["tmp"] / "data-link"
    link_root.symlink_to(tree["root"])
    real = str(tree["root"] / "sets" / "a")
    assert check_path(str(link_root / "sets" / "a"), [link_root]) == real
    assert check_path(real, [link_root]) == real


def test_several_roots_and_no_roots(tree: dict[str, Path]) -> None:
    key = str(tree["outside"] / "key")
    assert check_path(key, [tree["root"], tree["outside"]]) == key
    assert "none configured" in refused(key, [])


def test_a_sibling_with_a_common_prefix_is_not_under_the_root(tree: dict[str, Path]) -> None:
    sibling = tree["tmp"] / "data2"
    sibling.mkdir()
    assert "not under a data root" in refused(str(sibling), [tree["root"]])
    assert not is_under("/data2/x", ["/data"])
    assert is_under("/data/x", ["/data"]) and is_under("/data", ["/data"])
    assert is_under("/anything", ["/"])


def test_nothing_outside_the_roots_is_probed(tree: dict[str, Path]) -> None:
    # A missing path outside every root is refused as outside, not as missing.
    assert "not under a data root" in refused("/definitely/not/here", [tree["root"]])


def test_safetensors_count(tree: dict[str, Path]) -> None:
    root = tree["root"]
    assert safetensors_count(str(root)) == 1
    assert safetensors_count(str(root / "sets")) == 0
    assert safetensors_count(str(root / "model.safetensors")) is None
    os.mkdir(root / "dir.safetensors")  # directories do not count
    assert safetensors_count(str(root)) == 1


def test_without_proc_the_walk_in_python_gives_the_same_answers(
    tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree["root"]
    (root / "alias").symlink_to(root / "sets" / "a")
    (root / "weights").symlink_to("model.safetensors")  # relative target
    (root / "escape").symlink_to(tree["outside"] / "key")
    cases = [
        (root / "alias", PathKind.DIR),
        (root / "weights", PathKind.FILE),
        (root / "alias" / ".." / "a", PathKind.DIR),
        (root / "sets" / "a", PathKind.FILE),
        (root / "escape", PathKind.ANY),
        (root / "missing", PathKind.ANY),
    ]

    def answers() -> list[str]:
        out = []
        for path, kind in cases:
            try:
                out.append(check_path(str(path), [root], kind))
            except PathRefused as err:
                out.append(f"refused: {err}")
        return out

    with_proc = answers()
    assert with_proc[:3] == [os.path.realpath(path, strict=True) for path, _ in cases[:3]]
    assert "not a regular file" in with_proc[3] and "outside every data root" in with_proc[4]
    assert "does not exist" in with_proc[5]

    readlink = os.readlink

    def no_proc(path: str) -> str:
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return readlink(path)

    monkeypatch.setattr("dpd.jobs.paths.os.readlink", no_proc)
    assert answers() == with_proc
