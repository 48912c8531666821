"""`facesearch train` takes its defaults from TrainOptions, and reads them without importing torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from facesearch.cli.train import train
from facesearch.training.options import TrainOptions

#: CLI options named otherwise than their TrainOptions field
FIELD_OF = {"warmup": "warmup_fraction", "checkpoint_every": "checkpoint_interval_s"}
#: CLI options that are no TrainOptions field, or give one in another form (files of names, minutes)
CLI_ONLY = {"data", "out", "pk", "exclude_folds", "people_file", "exclude_people", "include_people",
            "time_budget", "no_augment", "quiet", "as_json"}
#: TrainOptions fields the CLI does not offer (the library's defaults apply)
NOT_ON_THE_CLI = {"data", "out", "exclude_people", "include_people", "min_lr_factor", "min_images", "threads",
                  "calibration_pairs", "time_budget"}


def test_every_cli_default_is_the_train_options_default():
    defaults = TrainOptions(data=".", out=".")  # input_size resolved to the recipe's, as a run sees it
    given = train.make_context("train", ["."]).params  # what the command receives when no option is given
    checked = set()
    for name, value in given.items():
        if name in CLI_ONLY:
            continue
        field = FIELD_OF.get(name, name)
        assert value == getattr(defaults, field), f"--{name}: {value!r}"
        checked.add(field)
    assert given["no_augment"] is False and given["augment"] == defaults.augment == "full"
    assert given["time_budget"] is defaults.time_budget is None
    assert checked | NOT_ON_THE_CLI == {f.name for f in dataclasses.fields(TrainOptions)}


def test_the_train_command_and_its_defaults_import_no_torch():
    code = ("import sys, facesearch.cli, facesearch.cli.train, facesearch.training.options\n"
            "print(sorted(m for m in ('torch', 'faiss', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "[]"
