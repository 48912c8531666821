"""`evaluate identify` keeps the people a model was trained on out of the run when the model's record
names them, and says so; otherwise it warns that the rates may include people the model saw."""

from __future__ import annotations

import pytest

from facesearch.datasets import ImageFolder
from facesearch.evaluation.identify import evaluate_identify, model_people
from facesearch.model.config import ModelConfig
from facesearch.model.files import builtin_model_dir
from facesearch.training.options import people_hash
from tests.conftest import LFW_ZIP, needs_lfw

pytestmark = needs_lfw


def test_the_built_in_lfw_model_is_evaluated_on_the_people_it_never_trained_on():
    folder = ImageFolder(LFW_ZIP)
    cfg = ModelConfig.load(builtin_model_dir("lfw-mobilenet") / "model.json")
    trained, calibrated = model_people(cfg, folder)
    assert people_hash(trained) == cfg.training.people_sha256 and len(calibrated) == 168 and not trained & calibrated
    r = evaluate_identify(LFW_ZIP, model="lfw-mobilenet", device="cpu", max_identities=60)
    assert r.trained_people_left_out == len(trained) == 1512
    # every person in the run is one it never trained on; its thresholds came from some of them: said
    assert any("calibrated on" in w and "optimistic" in w for w in r.warnings)
    assert r.n_enrolled_identities > 0 and r.rank1 >= 0


def test_an_imported_model_warns_that_its_people_are_unknown(tmp_path):
    folder = ImageFolder(LFW_ZIP)
    cfg = ModelConfig.load(builtin_model_dir("sface") / "model.json")
    assert model_people(cfg, folder) is None  # imported: no record of its people
    people = tmp_path / "people.txt"
    names = [n for n in folder.identities() if len(folder.items[n]) >= 3][:12]
    people.write_text(f"{len(names)}\n" + "".join(f"{n}\t{len(folder.items[n])}\n" for n in names))
    r = evaluate_identify(LFW_ZIP, model="sface", device="cpu", people=people)
    assert r.trained_people_left_out is None
    assert any("may have seen the people of this folder" in w for w in r.warnings)


def test_a_folder_of_only_trained_people_is_refused_plainly(tmp_path):
    """Only people lfw-mobilenet trained on: no honest run is possible, and it says so."""
    folder = ImageFolder(LFW_ZIP)
    cfg = ModelConfig.load(builtin_model_dir("lfw-mobilenet") / "model.json")
    trained, _ = model_people(cfg, folder)
    names = sorted(n for n in trained if len(folder.items[n]) >= 3)[:10]
    people = tmp_path / "people.txt"
    people.write_text(f"{len(names)}\n" + "".join(f"{n}\t{len(folder.items[n])}\n" for n in names))
    from facesearch.errors import FaceSearchError

    with pytest.raises(FaceSearchError, match="trained on every person"):
        evaluate_identify(LFW_ZIP, model="lfw-mobilenet", device="cpu", people=people)


def test_the_identify_report_is_one_page_with_its_warnings_plot_and_hardest_errors(tmp_path):
    from facesearch.evaluation import report

    r = evaluate_identify(LFW_ZIP, model="lfw-mobilenet", device="cpu", max_identities=60)
    assert r.dir_curve and r.dir_curve[0]["fpir"] <= r.dir_curve[-1]["fpir"]
    assert r.hardest and all(h["person"] != h["matched"] for h in r.hardest)
    assert [h["distance"] for h in r.hardest] == sorted(h["distance"] for h in r.hardest)
    paths = report.write_identify_report(r, tmp_path / "rep", warnings=["a warning from the record"])
    page = paths["html"].read_text()
    assert "a warning from the record" in page and "calibrated on" in page  # the run's own warnings too
    assert page.count('src="data:image/png;base64,') == 1  # DIR against FPIR, embedded
    assert page.count("data:image/jpeg;base64,") == 2 * len(r.hardest)  # probe and the face it was taken for
