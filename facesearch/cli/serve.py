"""``facesearch serve`` (the HTTP API and web page) and ``facesearch keys`` (the keys it accepts)."""

from __future__ import annotations

import click

from facesearch.cli.app import App, Command, Group, Output
from facesearch.cli.db import _store
from facesearch.cli.format import echo_json, echo_outcome
from facesearch.errors import FaceSearchError


@click.command(cls=Command)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; put a TLS proxy in front, see README).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--no-auth", is_flag=True,
              help="Accept requests without a key: on a loopback address only (127.0.0.1, ::1).")
@click.option("--rate", default=50.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Requests a second allowed per key (per address without auth).")
@click.option("--burst", default=100, show_default=True, type=click.IntRange(min=1),
              help="Requests allowed at once above the rate.")
@click.option("--max-body-mb", default=32.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Largest request body, in MiB.")
@click.option("--max-files", default=32, show_default=True, type=click.IntRange(min=1),
              help="Most images in one request.")
@click.option("--no-batching", is_flag=True,
              help="Embed each request alone instead of batching the requests that arrive together.")
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most face crops embedded in one forward pass.")
@click.option("--batch-wait-ms", default=4.0, show_default=True, type=click.FloatRange(min=0),
              help="How long a request waits for others to share its forward pass.")
@click.option("--embed-workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Threads that embed batches (0: one per core on the CPU, each single-threaded; one on a GPU).")
@click.option("--cors-origin", multiple=True, metavar="ORIGIN",
              help="Let web pages from ORIGIN (https://app.example.org) call the API; repeat for more. "
                   "Off by default.")
@click.option("--openapi", "print_openapi", is_flag=True, help="Print the OpenAPI schema and exit.")
@click.pass_obj
def serve(app: App, host, port, no_auth, rate, burst, max_body_mb, max_files, no_batching, max_batch,
          batch_wait_ms, embed_workers, cors_origin, print_openapi):
    """Serve the gallery over HTTP: the API (/v1/...), a web page (/), /healthz, /readyz and /metrics.

    Every request needs a key (`facesearch keys create`) unless --no-auth on a loopback address. The
    model and the index are loaded once; requests that arrive together are embedded together.
    Needs facesearch[serve].
    """
    from facesearch.serve import ServeConfig

    config = ServeConfig(host=host, port=port, auth=not no_auth, rate=rate, burst=burst,
                         max_body_bytes=int(max_body_mb * 1024 * 1024), max_files=max_files,
                         batching=not no_batching, max_batch=max_batch, max_wait_ms=batch_wait_ms,
                         embed_workers=embed_workers, cors_origins=tuple(cors_origin))
    config.check()
    try:
        import uvicorn

        from facesearch.serve.app import create_app
    except ImportError as e:
        raise FaceSearchError(f"facesearch serve needs facesearch[serve] ({e.name} is not installed): "
                              "pip install 'facesearch[serve]'") from None
    from facesearch.serve import Service

    if print_openapi:
        from facesearch.serve.app import openapi

        echo_json(openapi())
        return
    fs = app.open(create=True)

    def open_handle(detect: bool, fallback: bool):
        from facesearch.gallery import FaceSearch

        return FaceSearch.open(home=app.home, db_url=app.db, model=app.model, device=app.device, index=app.index,
                               backend=app.backend, detect=detect, detect_fallback=fallback,
                               vectors=app.settings.vectors)

    svc = Service(fs, config, open_handle)
    try:
        if not Output.quiet:
            click.echo("loading the model and the index...", err=True)
        svc.warm_up()
        from facesearch.store import keys

        if config.auth and not any(k.active for k in keys.list_keys(fs.store)) and not Output.quiet:
            click.echo("note: no API key yet, so every request will be refused: "
                       "`facesearch keys create --scope write` makes one", err=True)
        if not Output.quiet:
            where = f"[{host}]" if ":" in host else host
            click.echo(f"facesearch serving {fs.store.count_faces()} faces on http://{where}:{port}/ "
                       f"({'keys required' if config.auth else 'no key needed: loopback only'}, "
                       f"batching {'on' if config.batching else 'off'}); Ctrl-C stops", err=True)
        uvicorn.run(create_app(svc), host=host, port=port, log_level="warning", server_header=False,
                    date_header=False, limit_concurrency=1024, timeout_keep_alive=30, access_log=False)
    finally:
        svc.close()


# ---- keys ------------------------------------------------------------------------------------
@click.group(cls=Group)
def keys():
    """Create, list and revoke the API keys `facesearch serve` accepts (only their hashes are kept)."""


@keys.command("create")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True,
              help="read: query, verify, list; write: also enroll, rename, remove; admin: also manage keys.")
@click.option("--name", metavar="TEXT", help="What the key is for (shown by `keys list`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the key).")
@click.pass_obj
def keys_create(app: App, scope, name, as_json):
    """Create a key and print it once: it is not kept, only its hash is."""
    from facesearch.store import keys as _keys

    key, info = _keys.create(app.open(create=True).store, scope, name)  # a new home: the gallery it will serve
    if as_json:
        echo_json(dict(info.to_dict(), key=key))
    else:
        click.echo(key)
        if not Output.quiet:
            click.echo(f"key {info.id} ({scope}) created: the line above is the key, shown this once", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def keys_list(app: App, as_json):
    """List the keys: id, prefix, scope, name, created, revoked (never the keys themselves)."""
    from facesearch.store import keys as _keys

    store = _store(app, upgrade=False, must_exist=True)
    try:
        rows = _keys.list_keys(store)
    finally:
        store.close()
    if as_json:
        echo_json([k.to_dict() for k in rows])
        return
    for k in rows:
        state = "active" if k.active else f"revoked {k.revoked_at:%Y-%m-%d %H:%M}"
        click.echo(f"{k.id}\t{k.prefix}...\t{k.scope}\t{state}\t{k.created_at:%Y-%m-%d %H:%M}\t{k.name or ''}")


@keys.command("revoke")
@click.argument("key_id", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def keys_revoke(app: App, key_id, as_json):
    """Revoke key KEY_ID (from `keys list`): requests with it are refused from now on."""
    from facesearch.store import keys as _keys

    store = _store(app, upgrade=False, must_exist=True)
    try:
        info = _keys.revoke(store, key_id)
    finally:
        store.close()
    echo_outcome(as_json, info.to_dict(), f"key {info.id} ({info.prefix}...) revoked")
