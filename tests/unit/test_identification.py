"""The 1:N decision curve on hand-built arrays: its calibration (exact FPIR over every gallery, checked by
enumerating the galleries), the impostor tail, the FPIR rule (measured, interpolated, extrapolated, not
measurable), the choice of rule, and model.json records that hold it or do not."""

import itertools
import json
import math

import numpy as np
import pytest

from facesearch import distance
from facesearch.errors import ThresholdError
from facesearch.gallery.results import Decision, Match, QueryResult
from facesearch.gallery.thresholds import decide, default_fpir, fpir_table, fpir_threshold
from facesearch.model.config import ModelConfig
from facesearch.model.records import Calibration, GalleryThresholds, Identification, ImpostorTail
from facesearch.training.calibration import identification_curve, miss_ratio


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The one distance, as calibration computes it."""
    return distance.clip(distance.pairwise(a, b)).astype(np.float64)


def test_miss_ratio_is_the_share_of_galleries_holding_none_of_k_identities():
    for others, n in ((7, 1), (7, 3), (7, 7), (12, 5)):
        r = miss_ratio(others, n)
        want = [math.comb(others - k, n) / math.comb(others, n) for k in range(others + 1)]
        np.testing.assert_allclose(r, want, rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError):
        miss_ratio(3, 4)


def _one_image_each(m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """m identities with one image each: each is its identity's gallery face and its only probe."""
    return _unit(np.random.default_rng(seed).normal(size=(m, 8))), np.arange(m)


def _fpir_over_every_gallery(d: np.ndarray, n: int, t: float) -> float:
    """Brute force: for each probe, the share of all galleries of n other identities whose nearest face is
    within t; averaged over probes."""
    m = len(d)
    rates = []
    for p in range(m):
        others = [i for i in range(m) if i != p]
        galleries = list(itertools.combinations(others, n))
        rates.append(np.mean([min(d[p, list(g)]) <= t for g in galleries]))
    return float(np.mean(rates))


def test_each_stored_threshold_is_the_largest_whose_fpir_over_every_gallery_is_within_the_target():
    emb, labels = _one_image_each(8)
    d = _distances(emb, emb)
    fpirs = (0.5, 0.25, 0.1)
    c = identification_curve(emb, labels, seed=0, fpirs=fpirs)
    assert c["people"] == 8 and c["probes"] == 8 and c["faces_per_identity"] == 1
    assert [g["identities"] for g in c["galleries"]] == [1, 2, 5, 7]
    impostor = np.sort(d[~np.eye(8, dtype=bool)])
    for g in c["galleries"]:
        n = g["identities"]
        assert g["searches"] == 8 * (7 // n)
        for f, t in zip(fpirs, g["thresholds"]):
            if g["searches"] * f < 1:
                assert t is None  # too few searches to tell this FPIR from 0
                continue
            assert _fpir_over_every_gallery(d, n, t) <= f + 1e-9
            bigger = impostor[impostor > t]
            if bigger.size:  # the next distance would be over the target: t is the largest
                assert _fpir_over_every_gallery(d, n, float(bigger[0])) > f
    # a larger gallery needs a stricter (smaller) threshold for the same FPIR
    for i in range(len(fpirs)):
        col = [g["thresholds"][i] for g in c["galleries"] if g["thresholds"][i] is not None]
        assert col == sorted(col, reverse=True)


def test_the_impostor_tail_is_the_share_of_comparisons_within_each_threshold():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(40), 3)
    emb = _unit(rng.normal(size=(40, 16))[labels] + 0.8 * rng.normal(size=(120, 16)))
    c = identification_curve(emb, labels, seed=1, probes_per_identity=2)
    tail = c["impostor_tail"]
    assert c["probes"] == 80 and tail["comparisons"] == 80 * 39
    assert tail["far"][0] == pytest.approx(0.1) and tail["far"][-1] == pytest.approx(1 / tail["comparisons"])
    assert tail["far"] == sorted(tail["far"], reverse=True) and tail["threshold"] == sorted(tail["threshold"],
                                                                                            reverse=True)
    # the same comparisons, rebuilt: each probe against the one face of every other identity
    from facesearch.training.calibration import _probes_and_gallery

    gallery, probes, probe_id = _probes_and_gallery(labels, np.random.default_rng(1 + 2), 2)
    d = _distances(emb[probes], emb[gallery])
    d[np.arange(len(probes)), probe_id] = np.inf
    flat = d[np.isfinite(d)]
    assert flat.size == tail["comparisons"]
    for far, t in zip(tail["far"], tail["threshold"]):
        assert np.mean(flat <= t) <= far + 1e-9
        assert np.mean(flat <= np.min(flat[flat > t])) > far
    # the gallery of one identity is the tail at the same rate
    g1 = c["galleries"][0]
    assert g1["identities"] == 1 and g1["thresholds"][1] == pytest.approx(tail["threshold"][4])  # FPIR 1e-2


def test_a_curve_needs_two_identities_and_targets_in_range():
    from facesearch.errors import TrainingError

    emb, labels = _one_image_each(3)
    with pytest.raises(TrainingError):
        identification_curve(emb[:1], labels[:1], seed=0)
    with pytest.raises(ValueError):
        identification_curve(emb, labels, seed=0, fpirs=(0.0,))


#: a hand-built curve: FPIR 1e-1 and 1e-2 measured at 1, 10, 100 identities (1e-2 only to 10), a tail to 1e-6
CURVE = Identification(
    source="hand-built", fpirs=[0.1, 0.01], default_fpir=0.01,
    galleries=[GalleryThresholds(1, [0.80, 0.60]), GalleryThresholds(10, [0.60, 0.45]),
               GalleryThresholds(100, [0.50, None])],
    impostor_tail=ImpostorTail(far=[0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6], threshold=[0.8, 0.6, 0.5, 0.45, 0.42, 0.40],
                               comparisons=1_000_000))


def test_the_fpir_rule_measured_interpolated_extrapolated_not_measurable():
    assert fpir_threshold(CURVE, 0.1, 10) == (0.60, "measured")
    assert fpir_threshold(CURVE, 0.1, 0) == (0.80, "measured")  # an empty gallery counts as one identity
    t, status = fpir_threshold(CURVE, 0.1, 31)  # linear in log N between 10 and 100
    assert status == "interpolated" and t == pytest.approx(0.60 - 0.10 * math.log(3.1) / math.log(10))
    # beyond the measured sizes: the tail at FAR = 1 - (1 - FPIR)^(1/N), linear in log FAR between its points
    t, status = fpir_threshold(CURVE, 0.01, 1000)
    far = 1 - 0.99 ** (1 / 1000)
    want = 0.45 + (0.42 - 0.45) * (math.log(far) - math.log(1e-4)) / (math.log(1e-5) - math.log(1e-4))
    assert status == "extrapolated" and t == pytest.approx(want)
    # never looser than the largest measured size's threshold
    assert fpir_threshold(CURVE, 0.1, 101) == (0.50, "extrapolated")
    # a FAR below one in a million comparisons: the strictest the tail measures, and said so
    assert fpir_threshold(CURVE, 0.01, 10**6) == (0.40, "not measurable")
    with pytest.raises(ThresholdError, match="FPIR 0.1, 0.01, not 0.05"):
        fpir_threshold(CURVE, 0.05, 10)
    with pytest.raises(ThresholdError):
        fpir_threshold(CURVE, 1.0, 10)


def _config(identification=None) -> ModelConfig:
    cfg = ModelConfig(name="m", threshold=0.7)
    cfg.calibration = {"impostor_pairs": 1000, "operating_points": [{"far": 0.01, "threshold": 0.5}],
                       **({"identification": identification.to_dict()} if identification else {})}
    return cfg


def test_the_rule_that_decides():
    counted = []

    def count() -> int:
        counted.append(1)
        return 10

    cfg = _config(CURVE)
    assert decide(cfg, count) == Decision("fpir", 0.45, fpir=0.01, gallery_identities=10, status="measured")
    assert decide(cfg, count, fpir=0.1).threshold == 0.60
    assert decide(cfg, count, far=0.01) == Decision("far", 0.5, far=0.01)
    assert decide(cfg, count, threshold=0.3) == Decision("threshold", 0.3)
    assert len(counted) == 2  # only the FPIR rule asks for the gallery's size
    with pytest.raises(ThresholdError, match="one of"):
        decide(cfg, count, fpir=0.01, threshold=0.3)
    assert decide(cfg, lambda: 10**6).warning.startswith("FPIR 0.01 at 1000000 identities is beyond")
    old = _config()  # a model.json from before identification curves
    d = decide(old, count)
    assert d.rule == "verification" and d.threshold == 0.7 and "no identification calibration" in d.warning
    with pytest.raises(ThresholdError, match="no identification thresholds"):
        decide(old, count, fpir=0.01)
    assert default_fpir(CURVE) == 0.01 and default_fpir(Identification(fpirs=[0.1, 0.001])) == 0.1
    table = fpir_table(cfg, 10)
    assert [(r["fpir"], r["threshold"], r["status"], r["default"]) for r in table] == [
        (0.1, 0.60, "measured", False), (0.01, 0.45, "measured", True)]
    assert fpir_table(old, 10) == []


def test_a_query_result_names_its_decision():
    d = Decision("fpir", 0.45, fpir=0.01, gallery_identities=10, status="measured")
    r = QueryResult([Match("a", 0.3, True, 1, "x")], 0.45, "p", decision=d.to_dict())
    out = r.to_dict()
    assert out["decision"] == {"rule": "fpir", "threshold": 0.45, "fpir": 0.01, "gallery_identities": 10,
                               "status": "measured"}
    assert "decision" not in QueryResult([], 0.3, "p").to_dict()  # as it always was
    assert d.describe() == "FPIR 0.01 at 10 identities, measured"


def test_model_json_with_a_curve_round_trips_and_one_without_stays_without(tmp_path):
    emb, labels = _one_image_each(12)
    cfg = ModelConfig(name="m", threshold=0.5)
    cfg.calibration = {"pairs": 10, "identification": identification_curve(emb, labels, seed=0)}
    ident = cfg.calibration.identification
    assert isinstance(ident, Identification) and isinstance(ident.galleries[0], GalleryThresholds)
    assert isinstance(ident.impostor_tail, ImpostorTail)
    cfg.save(tmp_path / "model.json")
    again = ModelConfig.load(tmp_path / "model.json")
    assert again == cfg and again.to_dict() == json.loads((tmp_path / "model.json").read_text())
    assert again.calibration["identification"]["galleries"][0]["identities"] == 1  # the mapping reads
    old = {"pairs": 10, "accuracy": 0.9}
    assert Calibration.from_dict(old).to_dict() == old and Calibration.from_dict(old).identification is None


def test_people_files_of_both_lfw_views_and_plain_lists(tmp_path):
    from facesearch.errors import FaceSearchError
    from facesearch.evaluation.identify import read_people

    (tmp_path / "v1.txt").write_text("3\nA_B\t1\nC_D\t4\nE\t2\n")
    (tmp_path / "v2.txt").write_text("2\n2\nA_B\t1\nC_D\t4\n1\nE\t2\n")
    (tmp_path / "plain.txt").write_text("# mine\nA_B\n\nC_D\nA_B\n")
    assert read_people(tmp_path / "v1.txt") == read_people(tmp_path / "v2.txt") == ["A_B", "C_D", "E"]
    assert read_people(tmp_path / "plain.txt") == ["A_B", "C_D"]
    (tmp_path / "bad.txt").write_text("5\nA_B\t1\n")
    with pytest.raises(FaceSearchError, match="announces 5 people and lists 1"):
        read_people(tmp_path / "bad.txt")
