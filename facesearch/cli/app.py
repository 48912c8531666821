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
        if not Output.quiet:
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


class Output:
    """How much the CLI says besides results and errors: ``-q`` (nothing more), ``-v`` (log lines)."""

    quiet = False
    #: seconds between two progress lines when stderr is not a terminal (a log, a pipe, CI)
    heartbeat_s = 30.0


def _set_quiet(ctx, param, value):
    if value:
        Output.quiet = True
    return value


def _set_verbose(ctx, param, value):
    if value:
        logging.getLogger().setLevel(logging.INFO)
    return value


class Command(click.Command):
    """A command whose callback runs inside :func:`boundary`, whether run alone or under the group, and
    which takes ``-q/--quiet`` and ``-v/--verbose`` after its name as every command does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        names = {p.name for p in self.params}
        if "quiet" not in names:
            self.params.append(click.Option(["-q", "--quiet", "_quiet"], is_flag=True, expose_value=False,
                                            is_eager=True, callback=_set_quiet,
                                            help="Say nothing but results and errors (no progress, no notes)."))
        if "verbose" not in names:
            self.params.append(click.Option(["-v", "--verbose", "_verbose"], is_flag=True, expose_value=False,
                                            callback=_set_verbose, help="Log what happens (index rebuilds, ...)."))
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


class LazyGroup(Group):
    """The root group: its commands live in modules of :mod:`facesearch.cli` imported when a command is
    looked up (to run it, to list it in ``--help``, to complete it), not when the CLI starts.

    ``lazy_commands`` maps a command's name to ``(module, attribute)``; the modules named in
    ``optional_modules`` may be absent from an installation, and their commands are then not listed."""

    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str]], optional_modules=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands, self.optional_modules = dict(lazy_commands), frozenset(optional_modules)

    def _module(self, name: str):
        import importlib

        full = f"facesearch.cli.{name}"
        try:
            return importlib.import_module(full)
        except ImportError as e:
            if name in self.optional_modules and e.name == full:
                return None
            raise

    def list_commands(self, ctx) -> list[str]:
        import importlib.util

        names = set(super().list_commands(ctx))
        for name, (module, _) in self.lazy_commands.items():
            if module not in self.optional_modules or importlib.util.find_spec(f"facesearch.cli.{module}"):
                names.add(name)
        return sorted(names)

    def get_command(self, ctx, cmd_name: str):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in self.lazy_commands:
            module_name, attr = self.lazy_commands[cmd_name]
            module = self._module(module_name)
            if module is None:
                return None
            cmd = getattr(module, attr)
            self.add_command(cmd, cmd_name)
        return cmd


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

    def open(self, strict: bool = True, detect: bool = False, create: bool = False, fallback: bool = False):
        """The gallery. Commands that only read or change what is enrolled (``create`` False) refuse a home
        without a gallery rather than make an empty one: a mistyped ``--home`` would answer "unknown"."""
        if fallback and not detect:
            raise click.UsageError("--detect-fallback goes with --detect")
        if self._fs is None:
            from facesearch.gallery import FaceSearch
            from facesearch.settings import DB_FILE

            from facesearch.gallery.opening import check_device

            check_device(self.device)  # a bad option is the first thing said
            if not create and self.db is None and not (Path(self.home) / DB_FILE).is_file():
                raise FaceSearchError(f"no gallery in {self.home} (no {DB_FILE} there): check --home or "
                                      "FACESEARCH_HOME, or enroll faces first")

            self._fs = FaceSearch.open(home=self.home, db_url=self.db, model=self.model, device=self.device,
                                       index=self.index, backend=self.backend, strict=strict, detect=detect,
                                       detect_fallback=fallback, vectors=self.settings.vectors)
        return self._fs

    def close(self):
        if self._fs is not None:
            self._fs.close()


class Heartbeat:
    """Progress where stderr is not a terminal: one line every :attr:`Output.heartbeat_s` seconds and one
    at the end (``enroll: 1200/5000 img (24%), 35.2 img/s, 34 s``), instead of silence for minutes."""

    def __init__(self, total: int | None, desc: str, unit: str):
        import time

        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self._clock = time.monotonic
        self._start = self._last = self._clock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.n:
            self._say()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= Output.heartbeat_s:
            self._say()

    def refresh(self) -> None:  # tqdm's: nothing to redraw here
        pass

    def _say(self) -> None:
        now = self._clock()
        self._last, took = now, max(now - self._start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        click.echo(f"{self.desc}: {self.n}{of} {self.unit}{pct}, {self.n / took:.1f} {self.unit}/s, {took:.0f} s",
                   err=True)


def progress(total: int | None, desc: str, unit: str = "img", disable: bool | None = None):
    """A progress bar on a terminal; a periodic line (:class:`Heartbeat`) elsewhere; nothing with ``-q``
    or ``disable=True``."""
    from tqdm import tqdm

    if Output.quiet or disable is True:
        return tqdm(total=total, disable=True)
    if not sys.stderr.isatty():
        return Heartbeat(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def detect_option(f):
    f = click.option("--detect-fallback", "detect_fallback", is_flag=True,
                     help="With --detect: a photo in which no face is found is taken whole as an aligned face "
                          "crop (and said so) instead of failing.")(f)
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
