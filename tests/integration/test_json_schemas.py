"""Every --json output against its committed JSON Schema (docs/schemas), for one input and for many,
with and without failures, so a change of shape is a failing test and a schema change in the diff."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest
from click.testing import CliRunner

from facesearch.cli import cli
from tests.conftest import PEOPLE, REPO

SCHEMAS = REPO / "docs" / "schemas"


def check(name: str, doc) -> None:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, model_dir_with_operating_points, gallery_src):
    root = tmp_path_factory.mktemp("schemas")
    g = root / "g"
    for p in PEOPLE[:3]:
        (g / p).mkdir(parents=True)
        for i in (1, 2):
            shutil.copy(gallery_src / p / f"{p}_{i:04d}.webp", g / p)
    (g / PEOPLE[0] / "broken.jpg").write_bytes(b"not an image")
    base = ["--home", str(root / "home"), "--device", "cpu", "--model", str(model_dir_with_operating_points)]

    def run(*args, code=0):
        r = CliRunner().invoke(cli, base + list(args), catch_exceptions=False)
        assert r.exit_code == code, r.output
        return r

    run.g, run.probe = g, gallery_src / PEOPLE[1] / f"{PEOPLE[1]}_0003.webp"
    return run


def test_enroll(cli_run):
    check("enroll", json.loads(cli_run("enroll", str(cli_run.g), "--json", code=3).stdout))  # a failure
    check("enroll", json.loads(cli_run("enroll", str(cli_run.g), "--json", code=3).stdout))  # all skipped
    one = json.loads(cli_run("enroll", "-i", "Solo", str(cli_run.probe), "--json").stdout)
    check("enroll", one)
    assert one["added"] == 1


def test_query_has_one_shape_for_one_probe_and_for_many(cli_run):
    one = json.loads(cli_run("query", str(cli_run.probe), "--json").stdout)
    many = json.loads(cli_run("query", str(cli_run.g / PEOPLE[0]), "--json", code=3).stdout)  # broken.jpg too
    for doc in (one, many):
        check("query", doc)
    assert len(one) == 1 and len(many) == 3 and {"probe", "error"} <= set(many[0]) | set(many[1]) | set(many[2])
    check("query", json.loads(cli_run("query", str(cli_run.probe), "--far", "0.01", "--json").stdout))
    check("query", json.loads(cli_run("query", str(cli_run.probe), "--threshold", "0.1", "--json").stdout))


def test_query_with_detect(tmp_path, gallery_src):
    """--detect entries nest their faces; the built-in model (the gallery above is a test model)."""
    from tests.integration.test_detect import group_photo

    from PIL import Image

    photo = tmp_path / "group.jpg"
    Image.fromarray(group_photo()[0]).save(photo, quality=92)
    base = ["--home", str(tmp_path / "home"), "--device", "cpu", "--model", "lfw-mobilenet"]
    r = CliRunner().invoke(cli, base + ["enroll", "-i", "Someone", str(gallery_src / PEOPLE[0] / f"{PEOPLE[0]}_0001.webp")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, base + ["query", "--detect", "--json", str(photo)], catch_exceptions=False)
    doc = json.loads(r.stdout)
    check("query", doc)
    assert doc[0]["faces"] and all("face" in f for f in doc[0]["faces"])


def test_verify_info_identities_and_errors(cli_run):
    cli_run("enroll", str(cli_run.g), "--json", code=3)
    a, b = sorted((cli_run.g / PEOPLE[1]).iterdir())[:2]
    check("verify", json.loads(cli_run("verify", str(a), str(b), "--json").stdout))
    check("info", json.loads(cli_run("info", "--json").stdout))
    check("identities-list", json.loads(cli_run("identities", "list", "--json").stdout))
    check("identities-show", json.loads(cli_run("identities", "show", PEOPLE[1], "--json").stdout))
    r = cli_run("identities", "show", "Nobody", "--json", code=1)
    check("error", json.loads(r.stderr.strip().splitlines()[-1]))


def test_the_schemas_are_strict_enough_to_catch_a_change():
    """A schema that accepts anything checks nothing: each refuses a document with a field renamed."""
    for name in ("query", "enroll", "verify", "identities-list", "identities-show", "error"):
        schema = json.loads((SCHEMAS / f"{name}.json").read_text())
        bad = [{"probe": "x", "identity": None, "unknown": True, "threshold": 0.3, "match_list": []}] \
            if name == "query" else ({"dist": 1} if name != "identities-list" else [{"name": "x", "faces": 1}])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(schema).validate(bad)


def test_keys(cli_run):
    made = json.loads(cli_run("keys", "create", "--scope", "write", "--name", "ci", "--json").stdout)
    check("keys-create", made)
    listed = json.loads(cli_run("keys", "list", "--json").stdout)
    check("keys-list", listed)
    assert made["id"] in {k["id"] for k in listed} and all("key" not in k for k in listed)
    revoked = json.loads(cli_run("keys", "revoke", str(made["id"]), "--json").stdout)
    check("keys-revoke", revoked)
    assert revoked["active"] is False and revoked["revoked_at"]
