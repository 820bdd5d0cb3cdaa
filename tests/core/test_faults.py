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
