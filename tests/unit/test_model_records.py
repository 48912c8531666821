"""model.json's calibration and training sections as typed records: read and written exactly as before."""

import json

import numpy as np
import pytest

from facesearch.model import files
from facesearch.model.config import ModelConfig
from facesearch.model.records import (
    Calibration,
    NotMeasurable,
    OperatingPoint,
    Recalibrated,
    TrainingRecord,
)

BUILTIN_JSON = files.BUILTIN_MODELS / "lfw-mobilenet" / files.CONFIG_FILE  # the one with a training record


def test_the_built_in_model_json_reads_into_records_and_is_written_back_byte_for_byte(tmp_path):
    cfg = ModelConfig.load(BUILTIN_JSON)
    cal, tr = cfg.calibration, cfg.training
    assert isinstance(cal, Calibration) and isinstance(tr, TrainingRecord)
    assert cal.impostor_pairs == 3000 and cal.people == 168 and cal.accuracy == 0.896
    assert cal.operating_points == [OperatingPoint(0.01, 0.3748323917388916, 0.5493333333333333),
                                    OperatingPoint(0.001, 0.22058796882629395, 0.239)]
    assert cal.recalibrated == Recalibrated(previous_threshold=0.6835662722587585, flip_average=False)
    assert cal.operating_points_not_measurable == [] and cal.extra == {}
    assert tr.epochs == 88 and tr.people == 1512 and tr.options["lr"] == 0.0005 and tr.extra == {}
    assert cfg.to_dict() == json.loads(BUILTIN_JSON.read_text())
    cfg.save(tmp_path / "model.json")
    assert (tmp_path / "model.json").read_bytes() == BUILTIN_JSON.read_bytes()


def _calibrated_config() -> ModelConfig:
    """A config as training leaves it: calibrate()'s result, and the training record run() writes."""
    from facesearch.training import calibrate

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), 4)
    emb = rng.normal(size=(30, 16))[labels] + 0.6 * rng.normal(size=(len(labels), 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cal = calibrate(emb.astype(np.float32), labels, 500, seed=0)
    cfg = ModelConfig(name="trained")
    cfg.threshold = cal["threshold"]
    cfg.calibration = {k: v for k, v in cal.items() if k != "threshold"}
    cfg.training = {"recipe": "contrastive-pk", "loss": {"name": "contrastive", "neg_margin": 0.6},
                    "options": {"lr": 5e-4, "include_people": None}, "data": "faces", "people": 30, "images": 120,
                    "init_model": {"name": "base", "weights_sha256": "ab" * 32, "trained_on": {"people": 3}},
                    "seed": 0, "epochs": 2, "final_loss": None, "notes": "a test"}
    return cfg


def test_a_calibrated_training_output_round_trips(tmp_path):
    cfg = _calibrated_config()
    cal = cfg.calibration
    assert isinstance(cal, Calibration) and isinstance(cfg.training, TrainingRecord)
    assert cal.pairs == cal.genuine_pairs + cal.impostor_pairs and cal.people == 30
    assert all(isinstance(op, OperatingPoint) for op in cal.operating_points)
    # 500 pairs cannot measure a FAR of 1e-3: calibrate() says so instead of storing a threshold
    assert cal.operating_points_not_measurable == [NotMeasurable(0.001, 1000)]
    written = cfg.to_dict()
    cfg.save(tmp_path / "model.json")
    on_disk = json.loads((tmp_path / "model.json").read_text())
    assert on_disk == written and on_disk["calibration"]["operating_points_not_measurable"] == [
        {"far": 0.001, "needs_impostor_pairs": 1000}]
    assert on_disk["training"]["final_loss"] is None  # a null read or written stays a null
    again = ModelConfig.load(tmp_path / "model.json")
    assert again == cfg and again.to_dict() == on_disk
    again.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "model.json").read_bytes()


def test_keys_a_record_does_not_know_are_kept_and_absent_ones_stay_absent():
    old = {"source": "x", "pairs": 10, "threshold_note": "older facesearch"}  # no operating points at all
    cal = Calibration.from_dict(old)
    assert cal.extra == {"threshold_note": "older facesearch"} and cal.operating_points == []
    assert cal.to_dict() == old
    new = {"far": 0.01, "threshold": 0.2, "tar": 0.5, "ci95": [0.4, 0.6]}
    assert OperatingPoint.from_dict(new).to_dict() == new and OperatingPoint.from_dict(new).extra == {"ci95": [0.4, 0.6]}
    tr = TrainingRecord.from_dict({"epochs": 3, "lfw_evaluation": {"accuracy": 0.9}})
    assert tr.extra == {"lfw_evaluation": {"accuracy": 0.9}} and tr.to_dict() == {"epochs": 3, "lfw_evaluation":
                                                                                   {"accuracy": 0.9}}
    assert Calibration().to_dict() == {} and TrainingRecord.from_dict(None).to_dict() == {}


def test_the_mapping_reads_of_the_dicts_they_replace_still_answer():
    cfg = ModelConfig.load(BUILTIN_JSON)
    cal, tr = cfg.calibration, cfg.training
    assert cal.get("impostor_pairs") == 3000 and cal.get("nothing") is None and "pairs" in cal
    partial = Calibration.from_dict({k: v for k, v in cal.items() if k != "operating_points_not_measurable"})
    assert "operating_points_not_measurable" not in partial and "pairs" in partial  # not in the dict: not there
    assert cal["operating_points"][0] == {"far": 0.01, "tar": 0.5493333333333333, "threshold": 0.3748323917388916}
    assert (ModelConfig().calibration or {}) == {}  # an empty record is falsy, as the empty dict was
    assert dict(tr) == json.loads(BUILTIN_JSON.read_text())["training"]
    assert {k for k, _ in tr.items()} == set(tr.keys()) and len(tr) == len(tr.to_dict())
    with pytest.raises(KeyError):
        partial["operating_points_not_measurable"]
    # writes through the mapping: a new key lands in extra, a known one in its field (typed)
    tr["lfw_evaluation"] = {"accuracy": 0.9}
    tr["lfw_evaluation"]["tar"] = 0.5
    tr["notes"] = "changed"
    cal["recalibrated"] = {"previous_threshold": 0.5, "flip_average": True}
    assert tr.extra["lfw_evaluation"] == {"accuracy": 0.9, "tar": 0.5} and tr.notes == "changed"
    assert cal.recalibrated == Recalibrated(0.5, True)
    del tr["lfw_evaluation"], tr["notes"]
    assert "notes" not in tr and "lfw_evaluation" not in cfg.to_dict()["training"]


def test_operating_points_the_impostor_pairs_cannot_measure_are_left_out():
    cal = Calibration(impostor_pairs=500, operating_points=[OperatingPoint(0.01, 0.3), OperatingPoint(0.001, 0.2)])
    assert cal.measurable_operating_points() == [OperatingPoint(0.01, 0.3)]
    assert Calibration(operating_points=[OperatingPoint(0.001, 0.2)]).measurable_operating_points() != []
    assert cal.to_dict() == {"impostor_pairs": 500, "operating_points": [{"far": 0.01, "threshold": 0.3},
                                                                         {"far": 0.001, "threshold": 0.2}]}


def test_a_config_dict_holds_no_record_objects():
    """Everything to_dict gives goes to json.dumps (model.json, the store's model record, --json output)."""
    cfg = _calibrated_config()
    d = cfg.to_dict()
    d["calibration"]["operating_points"].clear()  # a copy: the config keeps its own
    assert cfg.calibration.operating_points and json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
