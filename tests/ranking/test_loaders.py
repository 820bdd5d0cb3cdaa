"""ranking.loaders: Criteo, Avazu, libFM (iPinYou) and plain tables into the click-log contract, on rows written
here; the real samples in the shared data folder when it is there."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ranking.loaders import (AVAZU_COLUMNS, CRITEO_CAT, CRITEO_INT, LoaderError, load_avazu, load_criteo, load_libfm,
                             load_table, read_featindex)
from tests.conftest import SHARED_DATA

CRITEO_ROWS = [
    "0\t1\t1\t5\t0\t1382\t4\t15\t2\t181\t1\t2\t\t2\t68fd1e64\t80e26c9b\tfb936136\t7b4723c4\t25c83c98\t7e0ccccf"
    "\tde7995b8\t1f89b562\ta73ee510\ta8cd5504\tb2cb9c98\t37c9c164\t2824a5f6\t1adce6ef\t8ba8b39a\t891b62e7\te5ba7672"
    "\tf54016b9\t21ddcdc9\tb1252a9d\t07b5194c\t\t3a171ecb\tc5c50484\te8b83407\t9727dd16",
    "1\t\t-1\t\t\t0\t\t0\t\t\t\t\t\t\t05db9164\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t",
]
AVAZU_ROWS = [
    "1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,"
    "ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79",
    "10000169349117863715,1,14102113,1005,1,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,"
    "96809ac8,711ee120,1,0,15704,320,50,1722,0,35,100084,79",
]


def test_criteo_rows_with_empty_and_negative_integers(tmp_path):
    path = tmp_path / "criteo.txt"
    path.write_text("\n".join(CRITEO_ROWS) + "\n")
    log = load_criteo(path)
    assert log.categorical == CRITEO_CAT and log.numeric == CRITEO_INT and log.time_column == ""
    assert log.frame["click"].tolist() == [0, 1] and log.frame["click"].dtype == np.int8
    assert log.frame["I2"].tolist() == [1.0, -1.0] and np.isnan(log.frame["I1"][1])
    assert log.frame["C1"].tolist() == ["68fd1e64", "05db9164"] and pd.isna(log.frame["C2"][1])
    assert log.frame["C26"][0] == "9727dd16"


def test_criteo_wrong_width_or_label_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("0\t1\t2\n")
    with pytest.raises(LoaderError, match="40 tab-separated fields.*found 3"):
        load_criteo(tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text(CRITEO_ROWS[0].replace("0", "2", 1) + "\n")
    with pytest.raises(LoaderError, match="must hold only 0 and 1"):
        load_criteo(tmp_path / "b.txt")


@pytest.mark.parametrize("header", [True, False])
def test_avazu_with_or_without_header_gives_ts_and_hour_of_day(tmp_path, header):
    path = tmp_path / "avazu.csv"
    path.write_text("\n".join(([",".join(AVAZU_COLUMNS)] if header else []) + AVAZU_ROWS) + "\n")
    log = load_avazu(path)
    assert log.frame["click"].tolist() == [0, 1] and log.time_column == "ts"
    assert [str(t) for t in log.frame["ts"]] == ["2014-10-21 00:00:00+00:00", "2014-10-21 13:00:00+00:00"]
    assert log.frame["hour_of_day"].tolist() == ["0", "13"]
    assert "hour_of_day" in log.categorical and "id" not in log.frame.columns and "hour" not in log.categorical
    assert log.frame["device_ip"].tolist() == ["ddd2926e", "96809ac8"]


def test_avazu_bad_hour_is_refused(tmp_path):
    (tmp_path / "a.csv").write_text(AVAZU_ROWS[0].replace("14102100", "20141021") + "\n")
    with pytest.raises(LoaderError, match="YYMMDDHH"):
        load_avazu(tmp_path / "a.csv")


def test_libfm_one_hot_with_featindex_gives_one_column_per_field(tmp_path):
    (tmp_path / "featindex.txt").write_text("weekday:1\t1\nweekday:2\t2\nregion:80\t3\nusertag:10006\t4\n"
                                            "usertag:10063\t5\ntruncate\t0\n")
    (tmp_path / "train.txt").write_text("1 1:1 3:1 4:1 5:1\n0 2:1\n0 0:1 2:1 3:0\n")
    assert read_featindex(tmp_path / "featindex.txt")[3] == ("region", "80")
    log = load_libfm(tmp_path / "train.txt", tmp_path / "featindex.txt")
    assert log.categorical == ("weekday", "region", "usertag", "truncate")
    f = log.frame
    assert f["click"].tolist() == [1, 0, 0]
    assert f["weekday"].tolist() == ["1", "2", "2"]
    assert f["usertag"][0] == "10006|10063" and pd.isna(f["usertag"][1])
    assert pd.isna(f["region"][2])  # idx:0 means absent


def test_libfm_unknown_index_is_refused(tmp_path):
    (tmp_path / "fi.txt").write_text("a:1\t1\n")
    (tmp_path / "t.txt").write_text("1 7:1\n")
    with pytest.raises(LoaderError, match="line 1.*'7:1'"):
        load_libfm(tmp_path / "t.txt", tmp_path / "fi.txt")


def test_a_plain_table_infers_numeric_and_categorical_and_keeps_keys(tmp_path):
    pd.DataFrame({"clicked": [0.0, 1.0, 0.0], "user_id": [7, 8, 7], "price": [1.5, 2.0, 3.0],
                  "city": ["a", "b", None]}).to_parquet(tmp_path / "log.parquet")
    log = load_table(tmp_path / "log.parquet", "clicked")
    assert log.numeric == ("price",) and log.categorical == ("city",)
    assert log.frame["click"].tolist() == [0, 1, 0] and log.frame["user_id"].tolist() == [7, 8, 7]
    with pytest.raises(LoaderError, match="no label column 'label'"):
        load_table(tmp_path / "log.parquet", "label")


@pytest.mark.skipif(not (SHARED_DATA / "wide_resdnn_criteo_avazu").is_dir(), reason="shared data absent")
def test_the_real_criteo_and_avazu_samples_load():
    root = SHARED_DATA / "wide_resdnn_criteo_avazu"
    criteo = load_criteo(root / "criteo" / "train.csv")
    assert len(criteo.frame) == 7200 and abs(criteo.frame["click"].mean() - 0.215) < 0.005
    avazu = load_avazu(root / "avazu" / "train.csv")  # with a header
    assert len(avazu.frame) == 8087 and avazu.frame["ts"].dt.day.unique().tolist() == [21]
    assert len(load_avazu(root / "avazu" / "dev.csv").frame) == 480  # without one


@pytest.mark.parametrize("values, example", [
    ([0, 1, 2.0], "e.g. 2.0"),           # a float as the file has it, not np.float64(2.0)
    (["0", "1", "yes"], "e.g. 'yes'"),   # text that is not a number: the text, not nan
])
def test_binary_label_names_the_bad_value_as_the_file_has_it(values, example):
    import pandas as pd

    from ranking.loaders import binary_label
    with pytest.raises(LoaderError, match=f"1 other value\\(s\\), {example}$"):
        binary_label(pd.Series(values, dtype=object if isinstance(values[0], str) else float), "click", "log.csv")
