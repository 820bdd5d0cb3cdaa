"""core.files: a reader sees the old file or folder or the new one, never a half-written one, and nothing of a
failed or killed write stays behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import files
from core.files import (current_or_previous, previous_version, replace_folder, restore_previous, staged_file,
                        staged_folder, write_text_atomically)


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> text)."""
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def old_folder(tmp_path) -> Path:
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    (target / "a.txt").write_text("old a")
    (target / "sub" / "b.txt").write_text("old b")
    return target


# ---------------------------------------------------------------------------------------------------------------
# staged_folder


def test_a_successful_block_swaps_the_new_folder_in_and_removes_the_old_one(old_folder):
    with staged_folder(old_folder) as tmp:
        assert tmp.is_dir() and not any(tmp.iterdir())  # an empty folder ...
        assert tmp.parent == old_folder.parent and tmp.name.startswith(".out.tmp-")  # ... hidden, beside the target
        assert tree(old_folder) == {"a.txt": "old a", "sub/b.txt": "old b"}  # readers still see the old folder
        (tmp / "c.txt").write_text("new c")
    assert tree(old_folder) == {"c.txt": "new c"}  # the old files are gone, not merged
    assert not tmp.exists()
    assert hidden(old_folder.parent) == []  # no staging folder and no renamed old folder left


def test_a_new_target_and_its_missing_parents_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with staged_folder(target) as tmp:
        (tmp / "x").write_text("1")
    assert tree(target) == {"x": "1"}
    assert hidden(target.parent) == []


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_error_in_the_block_leaves_the_previous_target_untouched(old_folder, error):
    with pytest.raises(type(error)):
        with staged_folder(old_folder) as tmp:
            (tmp / "half.txt").write_text("half written")
            raise error
    assert tree(old_folder) == {"a.txt": "old a", "sub/b.txt": "old b"}
    assert not tmp.exists() and hidden(old_folder.parent) == []


def test_an_error_before_there_was_a_target_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with staged_folder(tmp_path / "out") as tmp:
            (tmp / "x").write_text("1")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_orphaned_staging_folders_of_dead_processes_are_removed_on_the_next_call(tmp_path):
    target = tmp_path / "w[1]"  # glob characters in the name must match literally
    dead, alive = dead_pid(), os.getppid()
    orphan = tmp_path / f".w[1].tmp-{dead}-abc"
    running = tmp_path / f".w[1].tmp-{alive}-def"  # another process still writing
    other_target = tmp_path / f".w1.tmp-{dead}-ghi"  # w1's, not w[1]'s
    not_a_pid = tmp_path / ".w[1].tmp-x-jkl"
    for folder in (orphan, running, other_target, not_a_pid):
        folder.mkdir()
        (folder / "part").write_text("left over")
    with staged_folder(target) as tmp:
        assert not orphan.exists()
        (tmp / "x").write_text("1")
    assert tree(target) == {"x": "1"}
    assert hidden(tmp_path) == sorted(p.name for p in (running, other_target, not_a_pid))


def test_replace_folder_with_a_fixed_old_name(old_folder, tmp_path):
    old = tmp_path / ".out.previous"
    (old / "stale").mkdir(parents=True)  # left by a process killed after its first rename
    new = tmp_path / "new"
    new.mkdir()
    (new / "n.txt").write_text("new")
    replace_folder(new, old_folder, old)
    assert tree(old_folder) == {"n.txt": "new"}
    assert not new.exists() and not old.exists()


def test_a_kill_between_the_two_renames_leaves_the_previous_folder_under_the_fixed_old_name(
        old_folder, tmp_path, monkeypatch):
    old = tmp_path / ".out.previous"
    real_replace = os.replace
    calls = []

    def killed_on_second_rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies after moving the old folder aside
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", killed_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(old_folder, old=old) as tmp:
            (tmp / "n.txt").write_text("new")
    assert calls[0] == ("out", ".out.previous")
    assert not old_folder.exists()
    assert tree(old) == {"a.txt": "old a", "sub/b.txt": "old b"}  # a restarted process finds it here


def test_after_a_kill_between_the_renames_the_previous_version_is_found_and_restored(old_folder, monkeypatch):
    assert previous_version(old_folder) == old_folder.with_name(".out.old")
    real_replace = os.replace

    def killed_on_second_rename(src, dst):
        if Path(src).name != "out":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", killed_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(old_folder, old=previous_version(old_folder)) as tmp:
            (tmp / "a.txt").write_text("new")
    monkeypatch.setattr(files.os, "replace", real_replace)
    has_a = lambda folder: (folder / "a.txt").is_file()  # noqa: E731
    assert current_or_previous(old_folder, has_a) == previous_version(old_folder)
    restore_previous(old_folder)
    assert tree(old_folder) == {"a.txt": "old a", "sub/b.txt": "old b"} and not previous_version(old_folder).exists()
    assert current_or_previous(old_folder, has_a) == old_folder
    restore_previous(old_folder)  # nothing to restore: unchanged
    assert tree(old_folder) == {"a.txt": "old a", "sub/b.txt": "old b"}
    assert current_or_previous(old_folder.with_name("absent"), has_a) is None


# ---------------------------------------------------------------------------------------------------------------
# staged_file and write_text_atomically


def test_a_successful_file_block_replaces_the_target(tmp_path):
    target = tmp_path / "part-00000.parquet"
    target.write_text("old")
    with staged_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".part-00000.parquet.") and not tmp.exists()
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers still see the old file
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]


@pytest.mark.parametrize("existed", [True, False])
def test_an_error_in_the_file_block_leaves_the_previous_file_and_no_temporary_one(tmp_path, existed):
    target = tmp_path / "f.json"
    if existed:
        target.write_text("old")
    with pytest.raises(OSError, match="no space"):
        with staged_file(target) as tmp:
            tmp.write_text("half")
            raise OSError("no space")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["f.json"] if existed else [])
    if existed:
        assert target.read_text() == "old"


def test_write_text_atomically(tmp_path):
    target = tmp_path / "params.json"
    write_text_atomically(target, "{}\n")
    write_text_atomically(target, '{"a": 1}\n')
    assert target.read_text() == '{"a": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.json"]
