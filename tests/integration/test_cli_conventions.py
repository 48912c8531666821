"""What every command shares: help on each command and option, -q and -v after any command's name,
progress that shows up in a log (a line now and then) and vanishes with -q, and `python -m facesearch`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from facesearch.cli import cli
from facesearch.cli.app import Output
from tests.conftest import PEOPLE, REPO


def _commands(group: click.Group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the root group imports its command modules on lookup
        cmd = group.get_command(ctx, name)
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


COMMANDS = list(_commands(cli))


def test_every_command_is_listed():
    top = {p[0] for p, _ in COMMANDS}
    assert {"enroll", "query", "verify", "identities", "faces", "info", "reindex", "align", "cluster", "db",
            "model", "serve", "keys", "train", "calibrate", "evaluate"} <= top, top
    assert ("identities", "merge") in {p for p, _ in COMMANDS}


def test_a_query_process_does_not_import_the_other_commands_modules():
    code = ("import sys; from facesearch.cli import cli; import click; "
            "cli.get_command(click.Context(cli), 'query'); "
            "print(sorted(m for m in sys.modules if m.startswith('facesearch.cli.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    loaded = set(json.loads(r.stdout.replace("'", '"')))
    assert "facesearch.cli.gallery" in loaded, loaded
    assert not loaded & {"facesearch.cli.train", "facesearch.cli.evaluate", "facesearch.cli.serve",
                         "facesearch.cli.model", "facesearch.cli.align"}, loaded


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_and_option_has_help_and_takes_q_and_v(path, cmd):
    assert (cmd.help or "").strip(), f"{' '.join(path)} has no help text"
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            assert (p.help or "").strip(), f"{' '.join(path)} {p.opts[0]} has no help text"
    r = CliRunner().invoke(cli, [*path, "--help"])
    assert r.exit_code == 0, r.output
    if not isinstance(cmd, click.Group):
        assert "-q, --quiet" in r.output and "-v, --verbose" in r.output, r.output


def test_python_dash_m_and_version():
    r = subprocess.run([sys.executable, "-m", "facesearch", "-V"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("facesearch, version ")


def test_progress_is_a_periodic_line_in_a_log_and_nothing_with_q(tmp_path, model_dir, gallery_src, monkeypatch):
    g = tmp_path / "g"
    for p in PEOPLE[:3]:
        (g / p).mkdir(parents=True)
        for i in (1, 2):
            shutil.copy(gallery_src / p / f"{p}_{i:04d}.webp", g / p)
    monkeypatch.setattr(Output, "heartbeat_s", 0.0)  # a line on every update (default: every 30 s)
    base = ["--home", str(tmp_path / "home"), "--device", "cpu", "--model", str(model_dir)]
    r = CliRunner().invoke(cli, base + ["enroll", str(g)], catch_exceptions=False)
    assert r.exit_code == 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("enroll: ")]
    assert lines and lines[-1].startswith("enroll: 6/6 img (100%), "), r.stderr  # stderr is not a terminal here
    r = CliRunner().invoke(cli, base + ["enroll", str(g), "-q", "--json"], catch_exceptions=False)
    assert r.exit_code == 0 and r.stderr == "" and json.loads(r.stdout)["skipped"] == 6
    r = CliRunner().invoke(cli, base + ["query", str(g / PEOPLE[0]), "-q"], catch_exceptions=False)
    assert r.stderr == ""  # no progress, and the model's note is not printed either


def test_shell_completion_offers_the_gallery_identity_names(tmp_path, model_dir, gallery_src):
    import os

    home = tmp_path / "home"
    r = CliRunner().invoke(cli, ["--home", str(home), "--device", "cpu", "--model", str(model_dir), "enroll", "-i",
                                 "Zoe_Example", str(gallery_src / PEOPLE[0] / f"{PEOPLE[0]}_0001.webp")])
    assert r.exit_code == 0, r.output

    def complete(words: str) -> str:
        env = dict(os.environ, COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)),
                   _FACESEARCH_COMPLETE="bash_complete")
        return subprocess.run([sys.executable, "-c", "from facesearch.cli import main; main()"], env=env,
                              capture_output=True, text=True, cwd=REPO, timeout=60).stdout

    assert complete(f"facesearch --home {home} identities show Zo") == "plain,Zoe_Example\n"
    assert complete(f"facesearch --home {home} identities remove X").strip() == ""
    assert complete(f"facesearch --home {tmp_path / 'nowhere'} identities show Z").strip() == ""  # nothing created
    assert not (tmp_path / "nowhere").exists()
