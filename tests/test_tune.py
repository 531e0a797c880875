"""`toolkit tune`: Keras Tuner over the head on cached features; folds, budget, resume after a kill, report, and
`toolkit train --config best.json` reproducing the best trial's settings."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import train_config
from toolkit.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _rows(run: Path) -> list[dict]:
    with open(run / "tune" / "trials.csv") as handle:
        return list(csv.DictReader(handle))


def test_folds_are_stratified_and_keep_a_group_in_one_fold():
    from toolkit.tune.search import CachedFeatures, fold_indices

    labels = np.array([0, 1] * 12)
    groups = [f"g{i // 4}" for i in range(24)]  # six groups of four images
    cached = CachedFeatures({"tiny": np.zeros((24, 1))}, labels, np.arange(24) >= 18, groups, 2)
    folds = fold_indices(cached, 3, seed=0)
    assert len(folds) == 3 and sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(24))
    for train, held in folds:
        assert not {groups[i] for i in train} & {groups[i] for i in held}
        assert set(labels[held]) == {0, 1}
    ((train, held),) = fold_indices(cached, 1, seed=0)  # the run's own validation split
    assert held.tolist() == list(range(18, 24)) and train.tolist() == list(range(18))


@pytest.mark.slow  # TensorFlow and Keras Tuner
def test_a_search_resumes_reports_and_its_best_trains(demo_dir, tmp_path):
    from toolkit.tune import TuneOptions, search

    run = tmp_path / "run"
    config = train_config(demo_dir, run)
    search(config, TuneOptions(max_trials=2, folds=2), log=lambda _m: None)
    first = _rows(run)
    assert [r["trial"] for r in first] == ["0", "1"] and all(r["status"] == "COMPLETED" for r in first)
    search(config, TuneOptions(max_trials=3, folds=2), log=lambda _m: None)  # resumes: one more trial
    rows = _rows(run)
    assert len(rows) == 3 and rows[:2] == first  # the finished trials are kept, not re-run
    best = json.loads((run / "tune" / "best.json").read_text())
    assert best["accuracy"] == max(float(r["accuracy"]) for r in rows) and best["trials"] == 3
    assert (run / "tune" / "trials.png").stat().st_size > 0
    out = tmp_path / "best-run"
    result = runner.invoke(
        app, ["train", str(demo_dir), "--config", str(run / "tune" / "best.json"), "--out", str(out), "--quiet",
              "--epochs", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    trained = json.loads((out / "config.json").read_text())
    fine_tuning = ("fine_tune_epochs", "fine_tune_lr", "fine_tune_schedule", "fine_tune_from")
    for name in ("head", "dropout", "feature_norm", "lr", "weight_decay", "label_smoothing", "class_weight", "base",
                 *fine_tuning):  # fmt: skip
        assert trained[name] == best["settings"][name], name
    assert best["settings"]["fine_tune_from"] in ("block5", "block4")  # the cut by its name, not its position
    assert trained["epochs"] == 1  # a typed option wins over the file


@pytest.mark.slow
def test_the_time_budget_stops_new_trials(demo_dir, tmp_path):
    from toolkit.tune import TuneOptions, search

    run = tmp_path / "run"
    search(train_config(demo_dir, run), TuneOptions(max_trials=10, folds=2, time_budget_s=1), log=lambda _m: None)
    assert len(_rows(run)) == 1


@pytest.mark.slow  # a subprocess killed mid-search
@pytest.mark.xdist_group("processes")  # with the other multi-process tests, one at a time
def test_a_search_killed_mid_trial_resumes(demo_dir, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "toolkit.cli", "tune", str(demo_dir), "--out", str(run), "--base", "tiny",
               "--image-size", "32", "--weights", "none", "--max-trials", "30", "--folds", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:  # wait for a finished trial, then kill during the next one
        if line.startswith("trial 1:"):
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len([t for t in (run / "tune" / "keras_tuner").glob("trial_*/trial.json")
                if json.loads(t.read_text())["status"] == "COMPLETED"])  # fmt: skip
    assert done >= 2
    started = time.monotonic()
    resumed = subprocess.run([*command[:-4], "--max-trials", str(done + 1), "--folds", "2"], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    rows = _rows(run)
    assert len([r for r in rows if r["status"] == "COMPLETED"]) >= done + 1
    assert time.monotonic() - started < 300
    assert (run / "tune" / "best.json").is_file()


@pytest.mark.slow  # three processes: the chief oracle and two workers
@pytest.mark.xdist_group("processes")  # with the other multi-process tests, one at a time
def test_two_local_workers_share_one_search(demo_dir, tmp_path):
    from toolkit.tune import TuneOptions, search

    run, lines = tmp_path / "run", []
    search(train_config(demo_dir, run), TuneOptions(max_trials=4, folds=2, workers=2), log=lines.append)
    rows = _rows(run)
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" for r in rows)
    assert {line.split(" on ")[-1] for line in lines if line.startswith("trial ")} == {"tuner0", "tuner1"}
    assert (run / "tune" / "best.json").is_file()


@pytest.mark.slow
def test_several_bases_are_one_more_choice_each_with_its_features(demo_dir, tmp_path):
    from toolkit.tune import TuneOptions, search

    run = tmp_path / "run"
    search(
        train_config(demo_dir, run), TuneOptions(max_trials=4, folds=2, bases=["tiny", "vgg16"]), log=lambda _m: None
    )
    stores = {p.name for p in (run / "tune").glob("features-*.npy")}
    cuts = {f"features-{b}-{c}.npy" for b in ("tiny", "vgg16") for c in ("block5", "block4")}
    assert stores == {"features-tiny.npy", "features-vgg16.npy"} | cuts
    rows = _rows(run)
    assert len(rows) == 4 and {r["base"] for r in rows} <= {"tiny", "vgg16"}
    best = json.loads((run / "tune" / "best.json").read_text())
    assert best["settings"]["base"] == next(r["base"] for r in rows if r["trial"] == best["trial"])
    unknown = runner.invoke(app, ["tune", str(demo_dir), "--out", str(tmp_path / "x"), "--bases", "tiny,vgg99"])
    assert unknown.exit_code == 2 and "vgg99" in unknown.stderr


@pytest.mark.slow  # TensorFlow
def test_a_fine_tuning_trial_trains_the_base_above_its_cut_from_the_pretrained_weights(demo_dir, tmp_path):
    from toolkit.model import base_model, build_head
    from toolkit.tune import TuneOptions
    from toolkit.tune.finetune import FineTuneStep, fine_tune_fold
    from toolkit.tune.search import cache_features, fold_indices

    cached = cache_features(train_config(demo_dir, tmp_path / "run"), TuneOptions(), tmp_path, lambda _m: None)
    assert set(cached.cuts["tiny"]) == {"block5", "block4"}
    ((train, held),) = fold_indices(cached, 1, seed=0)
    top, cut = np.asarray(cached.features["tiny"], np.float32), np.asarray(cached.cuts["tiny"]["block5"], np.float32)
    pretrained = cached.pretrained_base("tiny")
    above = pretrained.reset("block5")
    np.testing.assert_allclose(above.predict(cut, verbose=0), top, rtol=0.02, atol=0.02 * np.abs(top).max())
    before = [w.copy() for w in above.get_weights()]
    below = base_model(cached.classifier("tiny")).get_layer("block1_conv1").get_weights()[0].copy()
    head = build_head(top.shape[1:], 2, "flatten", 0.0)
    head_only = head.predict(top[held], verbose=0)
    values = {"fine_tune_from": "block5", "fine_tune_epochs": 3, "fine_tune_lr": 1e-2, "fine_tune_schedule": "cosine",
              "weight_decay": 0.0, "label_smoothing": 0.0}  # fmt: skip
    probs = fine_tune_fold(values, FineTuneStep(pretrained, cached.cuts["tiny"]["block5"], cached.labels, 2, 8), head,
                           (train, held), None)  # fmt: skip
    assert probs.shape == (len(held), 2)
    assert not np.allclose(np.log(probs + 1e-30), np.log(head_only + 1e-30), atol=0.1)  # raw features: saturated
    assert any(not np.allclose(a, b) for a, b in zip(above.get_weights(), before))  # the base above the cut trained
    np.testing.assert_array_equal(base_model(cached.classifier("tiny")).get_layer("block1_conv1").get_weights()[0],
                                  below)  # fmt: skip
    pretrained.reset("block5")  # the next fold starts from the pretrained weights again
    assert all(np.array_equal(a, b) for a, b in zip(above.get_weights(), before))


@pytest.mark.slow
def test_a_heads_only_search_caches_no_cut_and_records_no_fine_tuning(demo_dir, tmp_path):
    from toolkit.tune import TuneOptions, search

    run = tmp_path / "run"
    search(train_config(demo_dir, run), TuneOptions(max_trials=1, folds=2, fine_tune=False), log=lambda _m: None)
    assert [p.name for p in (run / "tune").glob("features-*.npy")] == ["features-tiny.npy"]
    (row,) = _rows(run)
    assert row["fine_tune_epochs"] == "0" and "fine_tune_lr" not in row
    assert json.loads((run / "tune" / "best.json").read_text())["settings"]["fine_tune_epochs"] == 0


def test_a_settings_file_with_an_unknown_setting_is_one_line(demo_dir, tmp_path):
    bad = tmp_path / "best.json"
    bad.write_text(json.dumps({"settings": {"head": "gap", "learning_rate": 0.1}}))
    result = runner.invoke(app, ["train", str(demo_dir), "--config", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "learning_rate" in result.stderr


@pytest.mark.slow  # TensorFlow
def test_one_pass_stores_the_top_and_every_cut_as_separate_passes_would(tmp_path):
    from tests.conftest import IMAGE_SIZE
    from toolkit.model import build_classifier, build_feature_extractor, features_part, fine_tune_cut
    from toolkit.tune.features import cache_base_features, store_paths
    from toolkit.weights import WeightsRequest

    model, _ = build_classifier(2, IMAGE_SIZE, WeightsRequest("none"), base="tiny")
    images = np.random.default_rng(0).integers(0, 256, (20, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    made = []
    paths = store_paths(tmp_path, "tiny", cuts=True)
    stores = cache_base_features(lambda: made.append(1) or model, lambda: images, len(images), paths, "tiny")
    assert set(stores) == {None, "block5", "block4"} and made == [1]
    expected = {None: features_part(model).predict(images.astype(np.float32), verbose=0)}
    for cut in ("block5", "block4"):
        extractor = build_feature_extractor(model, "fp32", until=fine_tune_cut(model, cut))
        expected[cut] = extractor.predict(images.astype(np.float32), verbose=0)
    for key, want in expected.items():
        assert stores[key].dtype == np.float16 and stores[key].shape == want.shape
        np.testing.assert_allclose(np.asarray(stores[key], np.float32), want, rtol=1e-2, atol=1e-2 * np.abs(want).max())
    paths[None].unlink()  # a lost store is made again alone; the finished ones are reused
    before = {cut: paths[cut].stat().st_mtime_ns for cut in ("block5", "block4")}
    cache_base_features(lambda: made.append(1) or model, lambda: images, len(images), paths, "tiny")
    assert made == [1, 1] and paths[None].is_file()
    assert {cut: paths[cut].stat().st_mtime_ns for cut in ("block5", "block4")} == before
