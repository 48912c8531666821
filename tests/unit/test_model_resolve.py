"""facesearch.model.files: the one resolver of model specs, the model key, and their errors (no torch)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from facesearch.errors import ModelFileError
from facesearch.model import files
from facesearch.model.config import ModelConfig


def _model(d: Path, name: str = "m", weights: bytes = b"weights", **kw) -> Path:
    d.mkdir(parents=True)
    ModelConfig(name=name, **kw).save(d / files.CONFIG_FILE)
    (d / files.WEIGHTS_FILE).write_bytes(weights)
    return d


def test_default_and_builtin_specs_name_the_shipped_model():
    for spec in (None, "default", "builtin:default", "sface", "builtin:sface"):
        r = files.resolve(spec)
        assert r.location == "builtin:sface" and r.builtin
        assert r.directory == files.BUILTIN_MODELS / "sface" == files.builtin_model_dir() \
            == files.builtin_model_dir("default")
        assert r.config.name == "sface" and r.config.backbone == "sface"
    for spec in ("lfw-mobilenet", "builtin:lfw-mobilenet"):
        r = files.resolve(spec)
        assert r.location == "builtin:lfw-mobilenet" and r.config.name == "facesearch-mobilenet_v2-lfw-all"
    assert files.builtin_names() == ["lfw-mobilenet", "sface"]


def test_the_built_in_models_keys_are_what_galleries_recorded():
    """Galleries store these keys: they must not change while the built-in weights do not (the old
    default kept its weights and name when it moved to lfw-mobilenet, so its galleries still open)."""
    assert files.resolve("default").key == "sface@f1c57382391b"
    r = files.resolve("lfw-mobilenet")
    assert r.key == "facesearch-mobilenet_v2-lfw-all@63e623633f2d"
    assert r.sha256 == files.weights_sha256(r.directory)


def test_a_gallery_of_the_old_default_keeps_its_model():
    """Galleries made before the default changed recorded builtin:default: that meant lfw-mobilenet."""
    assert files.stored_location("builtin:default") == "builtin:lfw-mobilenet"
    assert files.stored_location("builtin:sface") == "builtin:sface"
    assert files.stored_location("/srv/m") == "/srv/m"
    assert files.location_for_user("builtin:default") == "lfw-mobilenet"


def test_a_directory_resolves_to_its_absolute_path(tmp_path, monkeypatch):
    d = _model(tmp_path / "a" / "model", weights=b"abc")
    monkeypatch.chdir(tmp_path / "a")
    for spec in ("model", Path("model"), str(d)):
        r = files.resolve(spec)
        assert r.directory == d and r.location == str(d) and not r.builtin and r.config.name == "m"
    # a path named "default" is a directory, not the built-in model; the string "default" is the built-in one
    monkeypatch.chdir(tmp_path)
    _model(tmp_path / "default")
    assert files.resolve(Path("default")).location == str(tmp_path / "default")
    assert files.resolve("default").builtin
    # the same for a built-in model's name: the bare name is the built-in one, ./NAME the directory
    _model(tmp_path / "sface", name="mine")
    assert files.resolve("sface").builtin
    assert files.resolve("./sface").location == str(tmp_path / "sface")
    assert files.resolve("sface/").config.name == "mine"


def test_the_weights_are_hashed_once_and_only_when_asked(tmp_path):
    d = _model(tmp_path / "m", weights=b"abc")
    r = files.resolve(d)
    (d / files.WEIGHTS_FILE).unlink()  # resolving did not need the weights' bytes
    with pytest.raises(FileNotFoundError):
        _ = r.sha256
    (d / files.WEIGHTS_FILE).write_bytes(b"abc")
    first = r.sha256
    (d / files.WEIGHTS_FILE).write_bytes(b"other")
    assert r.sha256 == first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert r.key == "m@ba7816bf8f01"


def test_the_key_says_when_mirror_images_are_averaged():
    cfg = ModelConfig(name="n", flip_average=True)
    assert files.model_key(cfg, "0123456789abcdef") == "n@0123456789ab+flip"
    assert files.model_key(ModelConfig(name="n"), "0123456789abcdef") == "n@0123456789ab"


def test_the_key_names_an_int8_models_ranges_and_model_json_keeps_its_record(tmp_path):
    q = {"precision": "int8", "method": "minmax", "ranges_sha256": "feedc0de" + "0" * 56}
    cfg = ModelConfig(name="n-int8", quantization=q)
    assert cfg.int8 and not ModelConfig(name="n").int8
    assert files.model_key(cfg, "0123456789abcdef") == "n-int8@0123456789ab+int8-feedc0de"
    other = ModelConfig(name="n-int8", quantization={**q, "ranges_sha256": "beef" + "0" * 60})
    assert files.model_key(other, "0123456789abcdef") != files.model_key(cfg, "0123456789abcdef")
    cfg.save(tmp_path / "model.json")
    assert ModelConfig.load(tmp_path / "model.json").quantization == q
    assert "quantization" not in ModelConfig(name="n").to_dict()  # fp32 model.json files stay as they were
    for bad in ({"precision": "int4", "ranges_sha256": "x"}, {"precision": "int8"}, "int8"):
        with pytest.raises(ModelFileError, match="quantization must say"):
            ModelConfig(name="n", quantization=bad)


def test_what_is_missing_is_said(tmp_path, monkeypatch):
    with pytest.raises(ModelFileError, match=r"not a facesearch model directory: it does not exist "
                                             r"\(built-in models, named without a path: lfw-mobilenet, sface\)"):
        files.resolve(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match=r"empty is not a facesearch model directory \(needs model.json "
                                             r"and weights.pt; model.json and weights.pt missing\)"):
        files.resolve(tmp_path / "empty")
    bad = _model(tmp_path / "bad")
    (bad / files.CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="model config .* is not valid"):
        files.resolve(bad)
    (bad / files.CONFIG_FILE).write_text(json.dumps({"name": "x", "colour": "red"}))
    with pytest.raises(ModelFileError, match="unknown model config keys"):
        files.resolve(bad)
    with pytest.raises(ModelFileError, match=r"the built-in model 'nope' is not installed .*--model DIR"):
        files.resolve("builtin:nope")
    monkeypatch.setattr(files, "BUILTIN_MODELS", tmp_path / "no-builtin")
    with pytest.raises(ModelFileError, match=r"the default model is not installed .*--model DIR"):
        files.resolve(None)


def test_a_stored_location_reads_back_as_the_user_passes_it():
    assert files.location_for_user("builtin:sface") == "sface"
    assert files.location_for_user("/srv/models/m") == "/srv/models/m"
    assert files.model_dir("builtin:sface") == files.BUILTIN_MODELS / "sface"


def test_the_model_files_and_config_import_no_torch():
    code = ("import sys, facesearch.model.files, facesearch.model.config, facesearch.model.inference; "
            "facesearch.model.files.resolve('default').sha256; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
