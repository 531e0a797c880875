from __future__ import annotations

import json

import pytest

from tests.conftest import IMAGE_SIZE


def test_final_metrics_are_those_of_the_saved_model_on_validation_images(trained_run):
    from toolkit.data import SplitOptions, discover_dataset, load_split_images
    from toolkit.keras_io import load_keras_model, predict_in_batches
    from toolkit.metrics import classification_metrics

    config = json.loads((trained_run / "config.json").read_text())
    split = discover_dataset(config["data_dir"], SplitOptions(val_split=0.25, seed=1))
    val = load_split_images(split.val, (IMAGE_SIZE, IMAGE_SIZE), None)
    probs = predict_in_batches(load_keras_model(trained_run / "best.keras"), val.images)
    expected = classification_metrics(probs, val.labels, ["benign", "malignant"])
    saved = json.loads((trained_run / "metrics.json").read_text())
    assert saved["confusion_matrix"] == expected.confusion_matrix
    assert saved["auc"] == pytest.approx(expected.auc, abs=1e-6)


def test_load_run_refuses_damaged_files_in_one_line(trained_run, tmp_path):
    import shutil

    from toolkit.errors import ModelError
    from toolkit.run_folder import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("cache"))
    assert load_run(run).labels == ["benign", "malignant"]
    (run / "labels.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read labels file"):
        load_run(run)
    (run / "labels.json").write_text('{"a": 1}')
    with pytest.raises(ModelError, match="list of class names"):
        load_run(run)
    (run / "best.keras").unlink()
    with pytest.raises(ModelError, match="no best.keras"):
        load_run(run)


def test_run_data_cache_stays_inside_the_run_folder(trained_run, tmp_path):
    import shutil

    from toolkit.run_folder import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("cache"))
    config = json.loads((run / "config.json").read_text())
    config["cache_dir"] = str(tmp_path / "elsewhere")  # a received run pointing outside itself
    (run / "config.json").write_text(json.dumps(config))
    data = load_run(run).load_data()
    assert len(data.val) == 6 and (run / "cache").is_dir() and not (tmp_path / "elsewhere").exists()
