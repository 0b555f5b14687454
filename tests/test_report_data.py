"""Run folders and the shared data folder."""

import json
import os

import pytest

from attnopt.data import DataError, shared
from attnopt.report import RunDir, atomic_torch_save


def test_run_dir_writes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    run = RunDir(tmp_path / "r")
    run.write_config({"p": 1.5, "arr": np.arange(3)})
    run.write_json("summary.json", {"x": float("nan"), "y": np.float64(2.0)})
    run.write_csv("h.csv", columns={"k": [1, 2], "d": [0.5, 0.25]})
    run.write_csv("rows.csv", rows=[{"a": 1}, {"a": 2, "b": 3}])
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    run.save_figure("f.png", fig)
    run.write_report("# hi")
    cfg = json.loads((tmp_path / "r/config.json").read_text())
    assert cfg["config"]["arr"] == [0, 1, 2] and "attnopt_version" in cfg["meta"]
    assert json.loads((tmp_path / "r/summary.json").read_text()) == {"x": None, "y": 2.0}
    assert (tmp_path / "r/h.csv").read_text().splitlines() == ["k,d", "1,0.5", "2,0.25"]
    assert (tmp_path / "r/f.png").read_bytes()[:4] == b"\x89PNG"
    assert not [f for f in os.listdir(tmp_path / "r") if f.endswith(".tmp")]
    with pytest.raises(ValueError, match="different lengths"):
        run.write_csv("bad.csv", columns={"a": [1], "b": [1, 2]})


def test_atomic_torch_save_roundtrip(tmp_path):
    import torch

    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "ck.pt")
    assert torch.load(tmp_path / "ck.pt")["w"].sum() == 2


def test_missing_data_file_is_clear(tmp_path):
    with pytest.raises(DataError, match="(?s)not found.*ATTNOPT_DATA"):
        shared.shared_file("sst2/sst2_glue.parquet", root=tmp_path)


def test_corrupted_data_file_is_detected(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2/sst2_glue.parquet").write_bytes(b"not the data")
    with pytest.raises(DataError, match="checksum mismatch"):
        shared.shared_file("sst2/sst2_glue.parquet", root=tmp_path)


def test_env_var_sets_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNOPT_DATA", str(tmp_path))
    assert shared.data_root() == tmp_path


def test_shared_folder_checksum_when_present():
    try:
        path = shared.shared_file("tokenizers/bert-base-uncased/vocab.txt")
    except DataError:
        pytest.skip("shared data folder not present")
    assert path.stat().st_size > 0
