"""The run folder: the one place that names a run's files and the schema of metrics.json."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from advrun.errors import AdvrunError
from advrun.runfolder import FAILED, INCOMPLETE, OK, Metrics, RunFolder, RunResult, SweepFolder


def _metrics(**extra) -> Metrics:
    return Metrics(dataset="digits", n_train=10, n_test=5, n_eval=5, clean_accuracy=0.8, test_accuracy=0.7,
                   final_train_loss=0.3, seed=3, **extra)


def _result(**extra) -> RunResult:
    curve = pd.DataFrame({"attack": ["pgd", "pgd"], "eps": [0.0, 0.1], "robust_accuracy": [0.8, 0.4],
                          "time_s": [0.1, 0.2]})
    per_sample = pd.DataFrame({"index": [0, 1, 0, 1], "eps": [0.0, 0.0, 0.1, 0.1], "success": [False, False, True, False],
                               "perturbation_norm": [0.0, 0.0, 0.1, 0.1], "fooled_by": ["", "", "apgd-linf", ""]})
    return RunResult(
        metrics=_metrics(attack="pgd", norm="linf", eps=0.1, robust_accuracy=0.4, success_rate=0.5, **extra),
        history=pd.DataFrame({"epoch": [1, 2], "loss": [0.5, 0.25]}), curve=curve, per_sample=per_sample,
        model_info={"in_shape": [4], "num_classes": 2}, weights={"w": torch.ones(2, 4)},
        audit=[{"name": "monotone", "status": "pass", "reason": "r", "advice": ""}],
        figures={"robustness_curve": {"png": b"\x89PNG fake", "svg": b"<svg/>"}},
    )


def test_metrics_without_an_attack_leave_the_attack_fields_out():
    record = _metrics().to_json()
    assert record["attack"] is None
    assert not {"norm", "eps", "robust_accuracy", "success_rate", "curve", "certified_accuracy", "audit"} & set(record)
    assert record["denominators"]["robust_accuracy"].endswith("/ n_eval")
    assert Metrics.from_json(record) == _metrics()
    assert _metrics().headline() == 0.8


def test_metrics_round_trip_through_json_and_ignore_unknown_keys():
    metrics = _metrics(attack="pgd", norm="linf", eps=0.1, robust_accuracy=0.4, success_rate=0.5,
                       certified_accuracy=0.2, audit={"warnings": 0})
    record = json.loads(json.dumps(metrics.to_json()))
    assert record["certified_accuracy"] == 0.2 and record["audit"] == {"warnings": 0}
    assert Metrics.from_json({**record, "added_by_a_later_version": 1}) == metrics
    assert metrics.headline() == 0.4


def test_metrics_intervals_follow_from_the_counts_and_leave_with_the_attack():
    from advrun.stats import clopper_pearson

    metrics = _metrics(attack="pgd", norm="linf", eps=0.1, robust_accuracy=0.4, success_rate=0.5,
                       counts={"n_correct": 4, "n_robust": 2, "n_eligible": 4, "n_success": 2})
    metrics.add_intervals()
    assert metrics.clean_accuracy_ci == list(clopper_pearson(4, 5))
    assert metrics.robust_accuracy_ci == list(clopper_pearson(2, 5))
    assert metrics.success_rate_ci == list(clopper_pearson(2, 4))  # over the eligible samples, not n_eval
    assert metrics.certified_accuracy_ci is None and metrics.interval("certified_accuracy") is None
    record = json.loads(json.dumps(metrics.to_json()))
    assert record["robust_accuracy_ci"] == metrics.robust_accuracy_ci and "Clopper-Pearson" in record["intervals"]
    assert "certified_accuracy_ci" not in record
    assert Metrics.from_json(record) == metrics and metrics.interval("success_rate") == clopper_pearson(2, 4)
    plain = _metrics(counts={"n_correct": 4})
    plain.add_intervals()
    record = plain.to_json()
    assert record["clean_accuracy_ci"] == list(clopper_pearson(4, 5))
    assert not {"robust_accuracy_ci", "success_rate_ci"} & set(record)


def test_metrics_written_before_the_intervals_still_read():
    record = _metrics(attack="pgd", norm="linf", eps=0.1, robust_accuracy=0.4, success_rate=0.5).to_json()
    for key in ("clean_accuracy_ci", "robust_accuracy_ci", "success_rate_ci", "counts", "intervals"):
        record.pop(key)
    metrics = Metrics.from_json(record)
    assert metrics.counts == {} and metrics.interval("robust_accuracy") is None and metrics.count("success_rate") is None


@pytest.mark.parametrize("record, said", [
    ([1, 2], "holds a JSON list"), ("text", "holds a JSON str"), ({"dataset": "digits"}, "n_train, n_test"),
])
def test_records_that_are_not_advrun_metrics_are_an_error_naming_the_file(record, said):
    with pytest.raises(AdvrunError, match=said) as info:
        Metrics.from_json(record, "run/metrics.json")
    assert info.value.key == "run/metrics.json"


def test_write_then_read_gives_the_result_back_and_metrics_json_comes_last(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    order = []
    from advrun import io

    for name in ("write_json", "write_csv", "write_bytes", "save_torch"):
        original = getattr(io, name)
        monkeypatch.setattr(io, name, lambda path, *a, _f=original: (order.append(path.name), _f(path, *a))[1])
    result = _result()
    folder.write(result)
    assert order[-1] == "metrics.json" and {"model.pt", "model.json", "curve.csv", "samples.csv", "audit.json",
                                              "robustness_curve.png", "robustness_curve.svg"} <= set(order)
    back = folder.read()
    assert back.metrics == result.metrics and back.model_info == result.model_info and back.audit == result.audit
    pd.testing.assert_frame_equal(back.history, result.history)
    pd.testing.assert_frame_equal(back.curve, result.curve.drop(columns="time_s"))  # timings live in metrics.json
    pd.testing.assert_frame_equal(back.per_sample, result.per_sample)  # an empty fooled_by reads back as ""
    assert torch.equal(torch.load(folder.weights, weights_only=True)["w"], torch.ones(2, 4))
    assert [p.name for p in folder.figures()] == ["robustness_curve.png"]


def test_status_follows_the_files(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.status() == INCOMPLETE and folder.metrics() is None
    folder.write_error("attack.eps: must be a number >= 0", "Traceback ...")
    assert folder.status() == FAILED and folder.error() == "attack.eps: must be a number >= 0"
    assert folder.traceback() == "Traceback ..."
    folder.write(_result())
    assert folder.status() == OK


def test_a_folder_without_metrics_is_not_read_as_a_finished_run(tmp_path):
    with pytest.raises(AdvrunError, match="holds no finished run"):
        RunFolder(tmp_path).read()
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(AdvrunError, match="cannot be read as JSON") as info:
        RunFolder(tmp_path).metrics()
    assert info.value.key == str(tmp_path / "metrics.json")


def test_sweep_jobs_are_found_in_job_number_order_whatever_their_names(tmp_path):
    for name, num in (("b", 2), ("a", 10), ("c", None), ("nested/d", 1)):
        job = RunFolder(tmp_path / name)
        job.write_config("seed: 0\n")
        if num is not None:
            job.file(RunFolder.HYDRA).write_text(f"hydra:\n  job:\n    num: {num}\n")
    (tmp_path / "not_a_job").mkdir()
    jobs = SweepFolder(tmp_path).jobs()
    assert [job.path.relative_to(tmp_path).as_posix() for job in jobs] == ["nested/d", "b", "a", "c"]
    assert jobs[-1].job_number() == math.inf


@pytest.mark.parametrize("field, value", [("clean_accuracy", "x"), ("timings", [1]), ("n_eval", 2.5),
                                          ("deterministic", 1), ("curve", {"a": 1}), ("robust_accuracy_ci", 0.5),
                                          ("counts", [3])])
def test_metrics_of_the_wrong_type_are_an_error_naming_the_file_and_the_key(field, value):
    record = {**_metrics().to_json(), field: value}
    with pytest.raises(AdvrunError, match=f"wrong type of {field}") as info:
        Metrics.from_json(record, "run/metrics.json")
    assert info.value.key == "run/metrics.json"


def test_a_run_whose_metrics_cannot_be_read_has_failed_everywhere(tmp_path):
    from advrun.reporting.sweep import job_record

    folder = RunFolder(tmp_path / "job")
    folder.write(_result())
    folder.file(RunFolder.METRICS).write_text("[1, 2]")
    assert folder.status() == FAILED and "holds a JSON list" in folder.error()
    assert job_record(folder.path, tmp_path)["status"] == FAILED


def test_without_hydra_yaml_a_job_is_numbered_by_its_folder_name(tmp_path):
    assert RunFolder(tmp_path / "12_attack.eps=0.1").job_number() == 12
    assert RunFolder(tmp_path / "3").job_number() == 3
    assert RunFolder(tmp_path / "run_3").job_number() == math.inf


def _string_constants(tree) -> set[str]:
    import ast

    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_only_runfolder_names_the_files_of_a_run_folder():
    # A file name of the run folder written as a string anywhere else in advrun/ (a path built by
    # hand) would bypass RunFolder; prose that mentions a file is a longer string and passes.
    import ast
    from pathlib import Path

    import advrun

    names = {value for key, value in vars(RunFolder).items() if key.isupper() and isinstance(value, str)}
    names |= set(RunFolder.REPORTS) | {value for key, value in vars(SweepFolder).items()
                                       if key.isupper() and isinstance(value, str)}
    package = Path(advrun.__file__).parent
    spelled = {str(path.relative_to(package)): sorted(names & _string_constants(ast.parse(path.read_text())))
               for path in package.rglob("*.py") if path.name != "runfolder.py"}
    assert {path: found for path, found in spelled.items() if found} == {}


def test_load_run_names_a_model_description_that_is_not_advruns(tmp_path):
    from advrun.experiment import load_run

    folder = RunFolder(tmp_path)
    folder.write_config("model:\n  _target_: advrun.models.MLP\n")
    folder.write(_result())
    folder.file(RunFolder.MODEL_INFO).write_text("[]")
    with pytest.raises(AdvrunError, match="is not advrun's model description") as info:
        load_run(tmp_path)
    assert info.value.key == "path"
