"""facesearch.settings: the environment is read in one place, and an option given beats it."""

from pathlib import Path

from facesearch import settings
from facesearch.settings import Settings


def test_nothing_set_gives_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = Settings.from_env({})
    assert s == Settings(home=tmp_path / ".facesearch", db_url=None, model=None)
    assert settings.default_home() == tmp_path / ".facesearch"


def test_the_three_variables_are_read_and_an_empty_one_is_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {"FACESEARCH_HOME": "~/faces", "FACESEARCH_DB": "postgresql+psycopg://u@h/db",
           "FACESEARCH_MODEL": "/srv/model", "FACESEARCH_OTHER": "x"}
    assert Settings.from_env(env) == Settings(tmp_path / "faces", "postgresql+psycopg://u@h/db", "/srv/model")
    empty = Settings.from_env({"FACESEARCH_HOME": "", "FACESEARCH_DB": "", "FACESEARCH_MODEL": ""})
    assert empty == Settings(tmp_path / ".facesearch")


def test_from_env_reads_the_process_environment_by_default(monkeypatch, tmp_path):
    monkeypatch.setenv("FACESEARCH_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("FACESEARCH_DB", raising=False)
    monkeypatch.setenv("FACESEARCH_MODEL", "default")
    assert Settings.from_env() == Settings(tmp_path / "h", None, "default")


def test_options_given_replace_the_environment_s_and_none_keeps_them(tmp_path):
    s = Settings(tmp_path / "env-home", "sqlite:///env.db", "env-model")
    assert s.override() == s
    o = s.override(home=str(tmp_path / "opt"), model=Path("m"))
    assert o == Settings(tmp_path / "opt", "sqlite:///env.db", Path("m"))
    assert s.override(db_url="sqlite:///opt.db").db_url == "sqlite:///opt.db"
