"""The store's identities: listing, renaming and removing them, and finding one by any spelling of its name."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from facesearch.errors import InvalidIdentityError, UnknownIdentityError
from facesearch.names import nfc_name, spellings, validate_identity
from facesearch.store.revision import StorePart
from facesearch.store.schema import Face, FaceInfo, Identity, IdentityInfo


def find_identity(s: Session, name: str) -> Identity | None:
    """The identity stored under ``name`` or another spelling of it (see :func:`facesearch.names.spellings`)."""
    forms = spellings(name)
    found = {i.name: i for i in s.scalars(select(Identity).where(Identity.name.in_(forms)))}
    return next((found[f] for f in forms if f in found), None)


class IdentitiesMixin(StorePart):
    """:class:`~facesearch.store.Store`'s methods on identities."""

    def count_identities(self) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count(Identity.id))))

    def identities(self) -> list[IdentityInfo]:
        with self.Session() as s:
            rows = s.execute(
                select(Identity.name, func.count(Face.id), Identity.created_at)
                .outerjoin(Face).group_by(Identity.id).order_by(Identity.name)
            )
            return [IdentityInfo(n, int(c), t) for n, c, t in rows]

    def identity_faces(self, name: str) -> list[FaceInfo]:
        with self.Session() as s:
            ident = find_identity(s, name)
            if ident is None:
                raise UnknownIdentityError(f"no identity named {name!r}")
            return [FaceInfo(f.id, ident.name, f.source) for f in sorted(ident.faces, key=lambda f: f.id)]

    def rename_identity(self, old: str, new: str) -> int:
        """Rename an identity; returns the store revision after it."""
        new = nfc_name(validate_identity(new))
        try:
            with self.Session.begin() as s:
                ident = find_identity(s, old)
                if ident is None:
                    raise UnknownIdentityError(f"no identity named {old!r}")
                taken = find_identity(s, new)
                if taken is not None and taken.id != ident.id:
                    raise InvalidIdentityError(f"an identity named {new!r} exists already")
                ident.name = new
                s.flush()
                return self._bump(s)
        except IntegrityError as e:
            raise InvalidIdentityError(f"an identity named {new!r} exists already") from e

    def list_faces(self, limit: int | None = None, after: int = 0) -> list[FaceInfo]:
        """Enrolled faces in face-id order, ``limit`` at a time from the first id above ``after`` (one query)."""
        with self.Session() as s:
            q = (select(Face.id, Identity.name, Face.source).join(Identity, Face.identity_id == Identity.id)
                 .where(Face.id > after).order_by(Face.id))
            if limit is not None:
                q = q.limit(limit)
            return [FaceInfo(i, n, src) for i, n, src in s.execute(q)]

    def merge_identities(self, source: str, into: str) -> tuple[int, int]:
        """Move every face of identity ``source`` to identity ``into`` and remove ``source`` (two names that
        turned out to be one person); returns the number of faces moved and the new revision. Face ids and
        embeddings are unchanged."""
        with self.Session.begin() as s:
            src, dst = find_identity(s, source), find_identity(s, into)
            for name, ident in ((source, src), (into, dst)):
                if ident is None:
                    raise UnknownIdentityError(f"no identity named {name!r}")
            if src.id == dst.id:
                raise InvalidIdentityError(f"{source!r} and {into!r} are the same identity")
            moved = s.execute(update(Face).where(Face.identity_id == src.id).values(identity_id=dst.id)).rowcount
            s.delete(src)
            s.flush()
            return int(moved), self._bump(s)

    def remove_identity(self, name: str) -> tuple[list[int], int]:
        """Delete an identity and its faces; returns the removed face ids and the new revision."""
        with self.Session.begin() as s:
            ident = find_identity(s, name)
            if ident is None:
                raise UnknownIdentityError(f"no identity named {name!r}")
            face_ids = list(s.scalars(select(Face.id).where(Face.identity_id == ident.id)))
            s.delete(ident)
            s.flush()
            return face_ids, self._bump(s)

