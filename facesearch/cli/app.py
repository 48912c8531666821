"""What every command shares: the error boundary, the options of the root group, and the gallery
opened on first use (``ctx.obj``)."""

from __future__ import annotations

import functools
import logging
import sys
import warnings

from pathlib import Path

import click

from facesearch.errors import FaceSearchError, FaceSearchWarning, ThresholdError
from facesearch.settings import Settings

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

#: exit codes of library errors that are not plain failures (1): a threshold or FAR that the model
#: cannot decide with is a usage error, as click's own are
EXIT_CODES: dict[type[FaceSearchError], int] = {ThresholdError: 2}

log = logging.getLogger("facesearch")


def _failure(message: str, exit_code: int = 1) -> click.ClickException:
    e = click.ClickException(message)
    e.exit_code = exit_code
    return e


def to_click(e: BaseException) -> click.ClickException:
    """The message and exit code a library or system error becomes (every command the same)."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(e, FaceSearchError):
        code = next((c for cls, c in EXIT_CODES.items() if isinstance(e, cls)), 1)
        return _failure(str(e), code)
    if isinstance(e, DBAPIError):  # e.g. a database locked past the busy timeout, a full disk, a lost server
        log.info("database error", exc_info=True)
        why = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        return _failure(f"database error: {why}")
    log.info("system error", exc_info=True)
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    return _failure(f"{e.strerror or e}{where}")


_show_warning = warnings.showwarning


def _note(message, category, filename, lineno, file=None, line=None):
    """Library warnings meant for the user (:class:`FaceSearchWarning`) as a one-line note on stderr;
    every other warning as Python shows it."""
    if issubclass(category, FaceSearchWarning):
        click.echo(f"note: {message}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


def show_notes() -> None:
    """Print the library's warnings for the user as notes (the root group calls it), each time."""
    warnings.showwarning = _note
    warnings.simplefilter("always", FaceSearchWarning)


def boundary(f):
    """Wrap a command's callback: library errors become a message and an exit code, never a traceback
    (a closed pipe, ``| head``, is left to click, which exits quietly)."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from sqlalchemy.exc import DBAPIError

        try:
            try:
                return f(*args, **kwargs)
            except BrokenPipeError:
                raise
            except (FaceSearchError, DBAPIError, OSError) as e:
                raise to_click(e) from e
        except click.ClickException as e:
            if not kwargs.get("as_json"):
                raise
            # --json: the error is JSON too (on stderr, with the exit code), so a script reads one format
            import json

            click.echo(json.dumps({"error": e.format_message(), "exit_code": e.exit_code}), err=True)
            sys.exit(e.exit_code)

    return wrapper


class Command(click.Command):
    """A command whose callback runs inside :func:`boundary`, whether run alone or under the group."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.callback is not None:
            self.callback = boundary(self.callback)


class Group(click.Group):
    """A group whose commands and sub-groups get the error boundary."""

    command_class = Command

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.callback is not None:
            self.callback = boundary(self.callback)


Group.group_class = Group


class App:
    """What the root group puts on ``ctx.obj``: the settings, the options, and the gallery opened on
    first use."""

    def __init__(self, settings: Settings, device, index, backend):
        self.settings, self.device, self.index, self.backend = settings, device, index, backend
        self._fs = None

    @property
    def home(self):
        return self.settings.home

    @property
    def db(self):
        return self.settings.db_url

    @property
    def model(self):
        return self.settings.model

    def open(self, strict: bool = True, detect: bool = False, create: bool = False):
        """The gallery. Commands that only read or change what is enrolled (``create`` False) refuse a home
        without a gallery rather than make an empty one: a mistyped ``--home`` would answer "unknown"."""
        if self._fs is None:
            from facesearch.gallery import FaceSearch
            from facesearch.settings import DB_FILE

            from facesearch.gallery.opening import check_device

            check_device(self.device)  # a bad option is the first thing said
            if not create and self.db is None and not (Path(self.home) / DB_FILE).is_file():
                raise FaceSearchError(f"no gallery in {self.home} (no {DB_FILE} there): check --home or "
                                      "FACESEARCH_HOME, or enroll faces first")

            self._fs = FaceSearch.open(home=self.home, db_url=self.db, model=self.model, device=self.device,
                                       index=self.index, backend=self.backend, strict=strict, detect=detect)
        return self._fs

    def close(self):
        if self._fs is not None:
            self._fs.close()


def progress(total: int | None, desc: str, unit: str = "img", disable: bool | None = None):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)


def detect_option(f):
    return click.option("--detect", is_flag=True,
                        help="The images are photos: find the faces and align them first (needs "
                             "facesearch[detect]). Without it, images must be aligned face crops.")(f)


def threshold_options(f):
    """--threshold / --far for the commands that decide match or not."""
    f = click.option("--far", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Decide with the model's stored threshold for this false accept rate (e.g. 1e-3, for "
                          "searching many people) instead of its balanced one; `facesearch info` lists them.")(f)
    f = click.option("--threshold", type=click.FloatRange(0, 2), default=None,
                     help="Decide with this distance instead of the model's threshold.")(f)
    return f
