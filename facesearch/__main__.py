"""``python -m facesearch``: the same as the ``facesearch`` command."""

from facesearch.cli import main

main()
