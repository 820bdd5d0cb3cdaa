"""core.files' fault points: a process armed with DASHCLIP_KILL_AT dies exactly where the rule says."""

from __future__ import annotations

import textwrap

from tests.reliability.processes import entry_env, killed, run

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from core.files import staged_file, staged_folder
    out = Path(sys.argv[1])
    for i in range(3):
        with staged_file(out / f"f{i}.txt") as tmp:
            tmp.write_text(str(i))
    with staged_folder(out / "folder") as tmp:
        (tmp / "a").write_text("a")
    print("done")
""")


def test_unarmed_process_writes_everything(tmp_path):
    done = run(["-c", SCRIPT, str(tmp_path)], entry_env(tmp_path))
    assert done.stdout.strip() == "done"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".txt") == ["f0.txt", "f1.txt", "f2.txt"]


def test_after_rename_of_the_second_match(tmp_path):
    killed(["-c", SCRIPT, str(tmp_path)], entry_env(tmp_path), "after-rename:*/f*.txt#2")
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != "mlflow.db")
    assert names == ["f0.txt", "f1.txt"]  # the second write landed, the third never started


def test_before_rename_leaves_only_a_hidden_staging_folder(tmp_path):
    killed(["-c", SCRIPT, str(tmp_path)], entry_env(tmp_path), "before-rename:*/folder")
    assert not (tmp_path / "folder").exists()
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".folder.tmp-")]
    assert len(staged) == 1 and (staged[0] / "a").read_text() == "a"  # complete, but never under its name


SWAP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from core.files import staged_folder
    out = Path(sys.argv[1]) / "state"
    for step in (1, 2):
        with staged_folder(out, old=out.with_name(".state.old")) as tmp:
            (tmp / "step").write_text(str(step))
""")


def test_between_renames_leaves_the_older_folder_under_its_fixed_old_name(tmp_path):
    """A kill between a swap's two renames: `state` is gone for that instant, the complete older folder waits under
    the fixed `old` name a restarted writer looks for (ranking/fit.py, embeddings/checkpoint.py), and the new one
    is complete in its staging folder."""
    killed(["-c", SWAP, str(tmp_path)], entry_env(tmp_path), "between-renames:*/state")
    assert not (tmp_path / "state").exists()
    assert (tmp_path / ".state.old" / "step").read_text() == "1"
    staged, = tmp_path.glob(".state.tmp-*")
    assert (staged / "step").read_text() == "2"
