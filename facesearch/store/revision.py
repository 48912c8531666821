"""The store's revision counter (``index_state``): every change to the faces bumps it in the same
transaction, so an index file stamped with an older revision is known to be stale."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from facesearch.store.schema import IndexState


def bump(s: Session) -> int:
    """Count one more change (with a new random change id) in ``s``'s transaction; returns the new revision."""
    s.execute(update(IndexState).where(IndexState.id == 1)
              .values(revision=IndexState.revision + 1, change_id=uuid.uuid4().hex))
    return int(s.scalar(select(IndexState.revision).where(IndexState.id == 1)))


def read_revision(s: Session) -> int:
    return int(s.scalar(select(IndexState.revision).where(IndexState.id == 1)) or 0)


def read_state(s: Session) -> tuple[int, str]:
    """``(revision, change_id)``: the revision counter and the random id of the change that set it."""
    row = s.execute(select(IndexState.revision, IndexState.change_id).where(IndexState.id == 1)).first()
    return (int(row[0] or 0), row[1] or "") if row else (0, "")


class StorePart:
    """What the parts of :class:`~facesearch.store.Store` (its query mixins) share: the engine, the
    session factory and the bump of the revision counter that every change makes in its transaction."""

    engine: Engine
    Session: sessionmaker
    #: an attribute rather than a call of :func:`bump`, so that a test can hold a transaction open after it
    _bump = staticmethod(bump)
