"""``facesearch db``: schema migrations and backups."""

from __future__ import annotations

from pathlib import Path

import click

from facesearch.cli.app import App, Group
from facesearch.cli.format import echo_json
from facesearch.errors import FaceSearchError


@click.group(cls=Group)
def db():
    """Schema migrations. facesearch also upgrades the schema itself when it opens a database."""


def _store(app: App, upgrade: bool, must_exist: bool = False):
    from facesearch.settings import DB_FILE
    from facesearch.store import Store

    url = app.db or f"sqlite:///{Path(app.home).expanduser() / DB_FILE}"
    if must_exist and url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise FaceSearchError(f"no gallery at {url[len('sqlite:///'):]} (check --home or --db)")
    return Store.open(url, upgrade=upgrade)


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_obj
def db_upgrade(app: App, revision):
    """Upgrade the schema (to the newest revision by default)."""
    store = _store(app, upgrade=False)
    try:
        store.upgrade(revision)
        click.echo(f"schema at {store.current_revision()}")
    finally:
        store.close()


@db.command("current")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def db_current(app: App, as_json):
    """Print the schema revision of the database and the newest one this facesearch knows."""
    store = _store(app, upgrade=False, must_exist=True)
    try:
        current, head = store.current_revision(), store.head_revision()
        if as_json:
            echo_json({"current": current, "head": head, "up_to_date": current == head})
        else:
            click.echo(f"current: {current}  head: {head}")
    finally:
        store.close()


@db.command("backup")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def db_backup(app: App, dest, as_json):
    """Copy the SQLite gallery to DEST (a new file), consistent even while others enroll.

    The copy holds every face, its embedding, its crop and the identities: all a gallery needs,
    the index is rebuilt from it. To use it, put it as facesearch.db in an empty home
    (facesearch --home NEW ...) or open it with --db sqlite:///DEST. A model directory other
    than the built-in one is not in the copy: keep it too. PostgreSQL: use pg_dump.
    """
    store = _store(app, upgrade=False, must_exist=True)
    try:
        r = store.backup(dest)
    finally:
        store.close()
    if as_json:
        echo_json(r)
    else:
        click.echo(f"backed up {r['faces']} faces of {r['identities']} identities to {r['path']} "
                   f"({r['bytes'] / 2**20:.1f} MiB, schema {r['schema']})")
