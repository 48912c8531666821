"""``facesearch train ARGS``, stopped the way a crash stops it: rank 0 raises right after its first epoch's
checkpoint is written (where the epoch loop says an exception leaves the run resumable). Run under
``torchrun`` by tests/integration/test_train_distributed.py; the other ranks then fail at their next
collective and torchrun stops the group. Not a test module itself (no ``test_`` prefix)."""

import sys


class Stopped(RuntimeError):
    pass


def main() -> None:
    from facesearch.training import runner

    real = runner.train_epochs

    def stopping(p, data, inputs, progress, log):
        def stop(line):
            raise Stopped(f"stopped after the checkpoint of epoch {p.state.epoch} (step {p.state.step})")

        return real(p, data, inputs, progress, stop if p.dist.main else log)

    runner.train_epochs = stopping
    from facesearch.cli import main as cli

    cli()  # reads sys.argv[1:]: the train command's arguments


if __name__ == "__main__":
    main()
