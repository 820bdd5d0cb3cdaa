"""Helpers shared by tests that break a world's raw tables on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def rewrite_raw_table(world: Path, table: str, df: pd.DataFrame) -> None:
    """Replace world/raw/<table> by df, unvalidated (as a user's broken export would be)."""
    folder = Path(world) / "raw" / table
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / "part-00000.parquet")
