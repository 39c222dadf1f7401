"""A user's own images, end to end, with no space file naming them: a tiny search on an
ImageFolder of the bundled digits written as PNGs, pointed at it with `--set`, then the winner
trained and evaluated on the folder's own test split."""

import json
import subprocess
import sys

import pytest
import yaml

from adr_scale.config import load_yaml
from tests.conftest import write_digit_pngs

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_a_search_on_an_imagefolder_set_from_the_command_line_and_its_evaluation(tmp_path):
    data = tmp_path / "digits"
    write_digit_pngs(data)
    raw = yaml.safe_load(open("tests/assets/ci_space.yaml"))  # the space names no dataset
    raw |= {"budget": {"epochs": 1}, "num_samples": 3, "max_concurrent": 2,
            "scheduler": {"type": "none"}, "confirm": {"top_k": 0},
            "long_run": {"train.epochs": 1}}
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    out = tmp_path / "search"
    sets = ["data.dataset=imagefolder", f"data.root={data}", "data.channels=1",
            "data.val_size=50", "attack.eval_steps=2"]
    cmd = [sys.executable, "-m", "adr_scale.tune", "--space", str(space), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "attack: Linf eps 16/255 (0.06275)" in done.stdout and "on imagefolder" in done.stdout
    best = load_yaml(out / "best.yaml")  # the --set fields reach the winner's config
    assert (best.data.dataset, best.data.root, best.data.channels) == ("imagefolder", str(data), 1)
    report = (out / "report.md").read_text()
    assert "3 trials (3 completed)" in report and "scrambled Sobol sequence" in report

    run = tmp_path / "long"
    trained = subprocess.run([sys.executable, "-m", "adr_scale.train", "--config",
                              str(out / "best.yaml"), "--set", "train.epochs=10", "--workers",
                              "0", "--out", str(run)],
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["class_names"] == [str(d) for d in range(10)]
    evaluated = subprocess.run([sys.executable, "-m", "adr_scale.evaluate", "--run", str(run),
                                "--attacks", "clean,pgd2", "--eps", "16/255", "--no-progress"],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-3000:]
    test = json.loads((run / "summary.json").read_text())["test"]
    assert (test["dataset"], test["split"], test["n"]) == ("imagefolder", "test", 120)
    accuracy = test["best"]["accuracy"]  # the folder's 120 test images, 10 classes
    assert set(accuracy) == {"clean", "pgd2"} and accuracy["pgd2"] <= accuracy["clean"]
    # well above chance (0.1), and near the validation split's: the same statistics and classes
    val = summary["best_val_clean_acc"]
    assert accuracy["clean"] > 0.3 and abs(accuracy["clean"] - val) < 0.25, (accuracy, val)
