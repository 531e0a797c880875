from __future__ import annotations

import json

import pytest

from toolkit.errors import DatasetError
from toolkit.hardware import is_chief, tf_config, worker_tag


def test_tf_config_roles(monkeypatch):
    cluster = {"worker": ["a:1", "b:2"]}
    assert is_chief({}) and worker_tag({}) == ""
    assert is_chief({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert not is_chief({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    assert not is_chief({"cluster": {**cluster, "chief": ["c:3"]}, "task": {"type": "worker", "index": 0}})
    assert worker_tag({"cluster": cluster, "task": {"type": "worker", "index": 1}}) == "worker-1"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not is_chief()


def test_malformed_tf_config_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{worker: oops")
    with pytest.raises(DatasetError, match="TF_CONFIG is not valid JSON"):
        tf_config()
    monkeypatch.setenv("TF_CONFIG", "[1, 2]")
    with pytest.raises(DatasetError, match="JSON object"):
        tf_config()


def test_a_stray_tf_config_does_not_stop_a_plain_run_writing_its_folder(demo_dir, tmp_path, monkeypatch):
    from tests.conftest import train_config
    from toolkit.train import train

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"index": 1}}))
    train(train_config(demo_dir, tmp_path / "run", epochs=1), log=lambda _m: None, verbose=0)
    assert (tmp_path / "run" / "run.json").is_file()
