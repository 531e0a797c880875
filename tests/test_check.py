"""`toolkit check`: duplicates planted across splits (exact, resized, re-encoded, cropped) are found and named,
--strict fails on them, and a clean folder passes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.data.check import CheckOptions, check_dataset

runner = CliRunner()


@pytest.fixture
def planted(demo_dir, tmp_path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """A copy of the demo set with duplicates of training images planted: what each plant copies."""
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    train = sorted((data / "train" / "benign").iterdir())
    malignant = sorted((data / "train" / "malignant").iterdir())
    plants = {}

    def plant(source: Path, dest: Path, transform) -> None:
        image = Image.open(source).convert("RGB")
        out = io.BytesIO()
        fmt = transform(image, out)
        dest = dest.with_suffix(".jpg" if fmt == "JPEG" else ".png")
        dest.write_bytes(out.getvalue())
        plants[dest.name] = (str(source), str(dest))

    shutil.copy(train[0], data / "test" / "benign" / "exact_copy.png")
    plants["exact_copy.png"] = (str(train[0]), str(data / "test" / "benign" / "exact_copy.png"))
    plant(
        train[1], data / "test" / "benign" / "resized", lambda im, out: (im.resize((96, 96)).save(out, "PNG"), "PNG")[1]
    )
    plant(
        malignant[0],
        data / "test" / "malignant" / "reencoded",
        lambda im, out: (im.save(out, "JPEG", quality=60), "JPEG")[1],
    )
    plant(train[3], data / "train" / "benign" / "twin", lambda im, out: (im.save(out, "JPEG", quality=90), "JPEG")[1])
    (data / "train" / "benign" / "broken.png").write_bytes(b"not an image")
    return data, plants


def test_planted_duplicates_are_found_and_named(planted):
    data, plants = planted
    report = check_dataset(data)
    leaks = {Path(p).name: leak for leak in report.leaks for p in (leak.a, leak.b) if Path(p).name in plants}
    for name in ("exact_copy.png", "resized.png", "reencoded.jpg"):
        source, copy = plants[name]
        leak = leaks[name]
        assert {leak.a, leak.b} == {source, copy}, name
        assert {leak.split_a, leak.split_b} == {"train", "test"}
    assert leaks["exact_copy.png"].kind == "exact" and leaks["resized.png"].kind == "near"
    assert report.leak_counts["train-test"] >= 3 and report.test_leaks >= 3
    source, copy = plants["twin.jpg"]  # inside train/: within a split, or train/val once validation is carved
    twin = next(d for d in report.duplicates + report.leaks if copy in (d.a, d.b))
    assert {twin.a, twin.b} == {source, copy} and {twin.split_a, twin.split_b} <= {"train", "val"}
    assert any("broken.png" in u["path"] for u in report.unreadable)
    assert any("train and test" in w for w in report.warnings)


def test_strict_fails_on_test_leaks_and_the_report_is_written(planted, tmp_path):
    data, _ = planted
    out = tmp_path / "out"
    result = runner.invoke(app, ["check", str(data), "--strict", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "exact_copy.png" in result.stdout and "train-test" in result.stdout
    report = json.loads((out / "check_report.json").read_text())
    assert report["test_leaks"] >= 3 and (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    lenient = runner.invoke(app, ["check", str(data), "--json"])
    assert lenient.exit_code == 0 and json.loads(lenient.stdout)["leak_counts"]["train-test"] >= 3


def test_a_clean_folder_passes_strict_and_distinct_images_are_not_duplicates(tmp_path):
    """The synthetic lesions look alike (200 of them at 64 px: perceptual hashes within a few bits): only the
    thumbnail check keeps them apart, so this fails if near-duplicates were judged on the hash alone."""
    from toolkit.data.demo import DemoDataConfig, write_demo_dataset

    data = tmp_path / "demo"
    write_demo_dataset(data, DemoDataConfig(per_class=100, size=64, seed=3))
    result = runner.invoke(app, ["check", str(data), "--strict"])
    assert result.exit_code == 0, result.output
    report = check_dataset(data)
    assert report.leaks == [] and report.duplicates == [] and report.imbalance == 1.0
    assert sum(report.counts["test"].values()) > 0
    loose = check_dataset(data, options=CheckOptions(near_mad=255))  # the hash alone
    assert loose.leaks, "the demo set no longer has look-alike lesions; this test needs another source of them"


@pytest.mark.slow  # a (tiny) training
def test_training_runs_the_check_and_warns_of_leaks(planted, tmp_path):
    from tests.conftest import train_config
    from toolkit.train import train

    data, _ = planted
    out = tmp_path / "run"
    result = train(train_config(data, out, epochs=1), log=lambda _m: None, verbose=0)
    check = json.loads((out / "data_report.json").read_text())["check"]
    assert check["test_leaks"] >= 3  # train-test or val-test: which side a source lands on is the split's choice
    assert any("and test" in w for w in result.warnings)
