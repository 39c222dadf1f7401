"""What `python -m adr_scale.tune` refuses before Ray starts, in one line with exit 2 (a resumed
search whose space changed, a study left without its Tune state, an unreadable Optuna database,
too few trials for the references), and what it never writes: a candidate without a finished run
is "not run", never nan, and has no winner's best.yaml."""

import json
import math

import optuna
import pytest
import yaml

from adr_scale.search.confirm import Candidate, report_section, summarise, write_winner
from adr_scale.search.driver import _space_record, main
from adr_scale.search.report import trial_status
from adr_scale.search.space import load_space, parse_space


@pytest.fixture(scope="module")
def space():
    return load_space("tests/assets/ci_space.yaml")


def _run(tmp_path, capsys, *extra, space_file="tests/assets/ci_space.yaml"):
    code = main(["--space", str(space_file), "--out", str(tmp_path / "out"), *extra])
    return code, capsys.readouterr().err.strip()


def test_too_few_trials_for_the_references_is_refused(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, "--num-samples", "2")
    assert code == 2 and "\n" not in err
    assert err == ("error: --num-samples: invalid value 2; allowed: an integer >= 3 (the 2 "
                   "references, run in every search, and at least one searched point)")
    assert not (tmp_path / "out").exists()


def test_an_unreadable_optuna_database_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "optuna.db").write_bytes(b"this is not sqlite" * 100)
    code, err = _run(tmp_path, capsys)
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: {out / 'optuna.db'}: not a readable Optuna database (")
    assert sorted(p.name for p in out.iterdir()) == ["optuna.db"]  # nothing written


def test_a_study_without_its_tune_state_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    optuna.create_study(study_name="smoke", storage=f"sqlite:///{out / 'optuna.db'}")
    code, err = _run(tmp_path, capsys)
    assert code == 2 and "\n" not in err
    assert "holds study 'smoke' of an earlier search whose Tune state is gone" in err
    assert not (out / "space.json").exists()


def test_a_resumed_search_refuses_a_changed_budget_and_accepts_a_new_confirm_block(
        tmp_path, capsys, space):
    from adr_scale.config import ConfigError
    from adr_scale.search.driver import _check_same_space

    saved = tmp_path / "space.json"
    saved.write_text(json.dumps(_space_record(space, 6)))
    raw = yaml.safe_load(open("tests/assets/ci_space.yaml"))
    longer = parse_space(raw | {"budget": {"epochs": 2}})
    with pytest.raises(ConfigError) as exc:
        _check_same_space(saved, _space_record(longer, 6))
    assert str(exc.value).startswith("epochs: 2 now, 4 in the search being resumed")
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"^num_samples: 8 now, 6 in the search"):
        _check_same_space(saved, _space_record(space, 8))
    wider = parse_space(raw | {"confirm": {"top_k": 2, "seeds": 2}})
    _check_same_space(saved, _space_record(wider, 6))
    said = capsys.readouterr().out.splitlines()
    assert said == ["resume: confirm_seeds changed from 4 to 2; applied",
                    "resume: confirm_top_k changed from 3 to 2; applied"]


def test_space_json_written_before_the_nested_records_still_resumes(tmp_path, capsys):
    """tests/assets/space_records.json holds the records the flat SearchSpace wrote (every bundled
    space, and variants with PBT, halving, a grid confirmation and a note): the nested space gives
    the same keys and values, so their output directories resume."""
    from adr_scale.search.driver import _check_same_space
    from adr_scale.search.space import load_space

    written = json.loads(open("tests/assets/space_records.json").read())
    for name, saved in written.items():
        if "record" in saved:  # a variant: the space it was parsed from, then its record
            space, saved, num = parse_space(saved["space"], source=name), saved["record"], 5
        else:
            space, num = load_space(name), 7
        assert _space_record(space, num) == saved, name
        path = tmp_path / "space.json"
        path.write_text(json.dumps(saved))
        _check_same_space(path, _space_record(space, num))
    assert capsys.readouterr().out == ""  # nothing changed


def test_trial_labels_say_who_stopped_a_trial(space):
    none = parse_space(yaml.safe_load(open("tests/assets/ci_space.yaml"))
                       | {"scheduler": {"type": "none"}})
    assert trial_status(space, "TERMINATED", False, 4) == "completed"
    assert trial_status(space, "TERMINATED", False, 2) == "stopped early by ASHA"
    assert trial_status(none, "TERMINATED", False, 2) == "ended early"
    assert trial_status(space, "RUNNING", False, 2) == "interrupted"
    assert trial_status(space, "PAUSED", False, 1) == "interrupted"
    assert trial_status(space, "PENDING", False, 0) == "pending"
    assert trial_status(space, "TERMINATED", True, 1) == "failed"


def test_a_candidate_without_a_finished_run_is_not_run_and_never_a_winner(space, tmp_path):
    params = space.reference_points()
    cands = [Candidate(name, p, space.field_values(p), math.nan) for name, p in params.items()]
    runs = {("paper", 0): [{"epoch": 15, "val_robust_acc": 0.8, "val_clean_acc": 0.9}],
            ("AT", 0): []}  # AT's run never finished an epoch
    rows = summarise(cands, [0], runs)
    at = next(r for r in rows if r.candidate.name == "AT")
    assert rows[0].candidate.name == "paper" and at.seeds == [] and str(at.robust) == "not run"
    text = report_section(space, rows, math.nan, tmp_path, 60.0)
    assert "nan" not in text and "| AT | " in text and "| not run | not run |" in text
    with pytest.raises(ValueError, match="AT has no finished run"):
        write_winner(tmp_path / "best.yaml", space, at, base_seed=0)
    assert not (tmp_path / "best.yaml").exists()


def test_set_applies_to_every_trial_and_best_yaml_and_refuses_bad_fields(tmp_path, capsys, space):
    from adr_scale.search.driver import with_overrides

    got = with_overrides(space, ["data.root=/data/mine", "attack.eps=0.1", "train.batch_size=32"])
    params = space.warm_start_params()
    for cfg in (got.trial_config(params), got.long_run_config(params)):
        assert (cfg.data.root, cfg.attack.eps, cfg.train.batch_size) == ("/data/mine", 0.1, 32)
    assert got.trial_config(params).train.epochs == 4  # the search fidelity still applies
    assert got.startup_seed() != space.startup_seed()  # another dataset, other start-up points
    for flag, message in (
            ("data.bogus=1", "error: --set: unknown key 'data.bogus'; allowed in data: "),
            ("adr.tau_end=1", "error: --set: adr.tau_end is searched by tests/assets/ci_space.yaml"),
            ("attack.eps=-1", "error: attack.eps: invalid value -1.0; allowed: a number in [0, 1]")):
        code, err = _run(tmp_path, capsys, "--set", flag)
        assert code == 2 and "\n" not in err and err.startswith(message), err
    assert not (tmp_path / "out").exists()


def test_an_address_where_nothing_answers_is_one_line_before_anything_is_written(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, "--address", "127.0.0.1:1")
    assert code == 2 and "\n" not in err
    assert err.startswith("error: --address: nothing answers at 127.0.0.1:1")
    assert not (tmp_path / "out").exists()
