"""The store's identities: listing, renaming and removing them, and finding one by any spelling of its name."""

from __future__ import annotations

from sqlalchemy import func, select
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

