"""The store's parts on their own: identity-name rules, the dialect differences, opening without alembic."""

import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from facesearch.errors import InvalidIdentityError
from facesearch.names import MAX_IDENTITY_LENGTH, nfc_name, spellings, validate_identity
from facesearch.store import HEAD_REVISION, Store, dialects


@pytest.mark.parametrize("bad", ["", "   ", " Ada", "Ada ", ".hidden", "..", "a/b", "a\\b", "a\x00b", "a\u200eb",
                                 "x" * (MAX_IDENTITY_LENGTH + 1)])
def test_validate_identity_refuses_unsafe_names(bad):
    with pytest.raises(InvalidIdentityError):
        validate_identity(bad)


def test_validate_identity_keeps_good_names_as_they_are():
    for good in ("Ada Lovelace", "José", "x" * MAX_IDENTITY_LENGTH, "O'Brien (2)"):
        assert validate_identity(good) == good


def test_spellings_of_a_name_are_its_nfc_and_nfd_forms_first_as_given():
    nfd = unicodedata.normalize("NFD", "José")
    assert nfc_name(nfd) == "José"
    assert spellings(nfd) == [nfd, "José"]
    assert spellings("José") == ["José", nfd]
    assert spellings("Ada") == ["Ada"]


def test_sqlite_path_is_the_file_of_a_sqlite_url_only(tmp_path):
    assert dialects.sqlite_path(f"sqlite:///{tmp_path}/g.db") == tmp_path / "g.db"
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:g.db?mode=ro&uri=true",
                "postgresql+psycopg://u@h/db"):
        assert dialects.sqlite_path(url) is None


def test_upsert_exists_for_sqlite_and_postgresql_only():
    assert dialects.upsert("sqlite") is not None and dialects.upsert("postgresql") is not None
    assert dialects.upsert("mysql") is None


def test_a_database_at_head_opens_without_importing_alembic(tmp_path):
    url = f"sqlite:///{tmp_path}/g.db"
    Store.open(url).close()  # created and migrated (alembic imported here)
    code = ("import sys\nfrom facesearch.store import Store\n"
            f"s = Store.open({url!r}); print(s.current_revision()); s.close()\n"
            "print('alembic' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out == [HEAD_REVISION, "False"]
