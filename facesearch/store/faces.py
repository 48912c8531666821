"""The store's faces: adding them (with their identities), reading their embeddings, removing them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import func, select

from facesearch.errors import ModelMismatchError
from facesearch.names import nfc_name, spellings, validate_identity
from facesearch.store.dialects import reserve_face_ids
from facesearch.store.revision import StorePart
from facesearch.store.schema import Face, FaceCrop, FaceInfo, Identity, ModelRecord


class FacesMixin(StorePart):
    """:class:`~facesearch.store.Store`'s methods on faces."""

    def known_hashes(self, hashes: Sequence[str], detected_only: bool = False) -> dict[str, str]:
        """Which of these face keys are enrolled already: key -> identity name. ``detected_only``: only the
        faces that were found by the detector (a gallery enrolled before detected faces had keys of their
        own stored their photos' plain content hashes)."""
        out: dict[str, str] = {}
        hashes = list(set(hashes))
        with self.Session() as s:
            for i in range(0, len(hashes), 500):
                q = (select(Face.content_sha256, Identity.name).join(Identity)
                     .where(Face.content_sha256.in_(hashes[i : i + 500])))
                if detected_only:
                    q = q.where(Face.detection.is_not(None))
                out.update({h: n for h, n in s.execute(q)})
        return out

    def add_faces(self, model_id: int, faces: Sequence[tuple[str, str, str, np.ndarray, bytes | None]],
                  detections: Sequence[dict | None] | None = None) -> tuple[list[int], int]:
        """Insert faces ``(identity, source, sha256, embedding, crop_png)`` in one transaction;
        ``detections`` (one per face, or None) says where each was found in its source photo.

        Returns the new face ids and the store revision after the insert. All or nothing.
        """
        if detections is None:
            detections = [None] * len(faces)
        elif len(detections) != len(faces):
            raise ValueError("one detection (or None) per face")
        with self.Session.begin() as s:
            names = {f[0] for f in faces}
            stored = dict(s.execute(select(Identity.name, Identity.id)
                                    .where(Identity.name.in_({f for n in names for f in spellings(n)}))).all())
            # each name -> the identity stored under one of its spellings, else a new one (in NFC)
            ids = {n: next((stored[f] for f in spellings(n) if f in stored), None) for n in names}
            new = [Identity(name=validate_identity(n)) for n in sorted({nfc_name(n) for n, i in ids.items() if i is None})]
            s.add_all(new)
            s.flush()  # one flush for all new identities (a flush each made 1M-face inserts 3x slower)
            created = {i.name: i.id for i in new}
            ids = {n: i if i is not None else created[nfc_name(n)] for n, i in ids.items()}
            face_ids = reserve_face_ids(s, self.engine.dialect.name, len(faces))
            rows = [
                Face(id=fid, identity_id=ids[name], model_id=model_id, source=source[:1024], content_sha256=sha,
                     embedding=np.ascontiguousarray(emb, dtype="<f4").tobytes(), detection=det)
                for fid, (name, source, sha, emb, crop), det in zip(face_ids, faces, detections)
            ]
            s.add_all(rows)
            s.flush()
            s.add_all([FaceCrop(face_id=r.id, crop_png=f[4]) for r, f in zip(rows, faces) if f[4] is not None])
            s.flush()
            # checked after the writes, holding the write lock (SQLite) or the model row (PostgreSQL):
            # a `reindex --model` that switched models meanwhile makes this batch fail, not mix models
            # lock this batch's own model row by id: a switch that is not committed yet holds it, and
            # once it commits the row is read again (a lock on "the active row" would miss the new one)
            mine = s.execute(select(ModelRecord.active).where(ModelRecord.id == model_id).with_for_update()).scalar()
            active = None if mine else s.execute(
                select(ModelRecord.id, ModelRecord.key).where(ModelRecord.active.is_(True))).first()
            if active is not None:
                raise ModelMismatchError(
                    f"the gallery's model is now {active.key} (a `facesearch reindex --model` switched it "
                    "while these faces were being embedded); nothing of this batch was stored. Run the "
                    "command again: it uses the gallery's new model and skips what is stored.")
            return [r.id for r in rows], self._bump(s)


    def iter_embeddings(self, model_id: int | None = None, chunk: int = 50_000
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids int64, embeddings float32 n x d)`` chunks, ordered by face id."""
        last = 0
        with self.Session() as s:
            while True:
                q = select(Face.id, Face.embedding).where(Face.id > last).order_by(Face.id).limit(chunk)
                if model_id is not None:
                    q = q.where(Face.model_id == model_id)
                rows = s.execute(q).all()
                if not rows:
                    return
                ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                embs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
                last = int(ids[-1])
                yield ids, embs.astype(np.float32)

    def face_ids(self) -> np.ndarray:
        """Every face id, sorted (int64): what a vector backend is checked against."""
        with self.Session() as s:
            return np.fromiter(s.scalars(select(Face.id).order_by(Face.id)), np.int64)

    def embeddings_found(self, face_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, embeddings)`` of those of these faces that are stored (a face removed meanwhile is left
        out), ordered by face id."""
        ids = sorted({int(i) for i in face_ids})
        rows: dict[int, bytes] = {}
        with self.Session() as s:
            for i in range(0, len(ids), 500):
                rows.update(s.execute(select(Face.id, Face.embedding).where(Face.id.in_(ids[i:i + 500]))).all())
        found = [i for i in ids if i in rows]
        if not found:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        embs = np.frombuffer(b"".join(rows[i] for i in found), dtype="<f4").reshape(len(found), -1)
        return np.asarray(found, np.int64), embs.astype(np.float32)

    def embeddings(self, face_ids: Sequence[int]) -> np.ndarray:
        with self.Session() as s:
            rows = dict(s.execute(select(Face.id, Face.embedding).where(Face.id.in_(list(face_ids)))).all())
        return np.stack([np.frombuffer(rows[i], dtype="<f4") for i in face_ids]).astype(np.float32)

    def face_info(self, face_ids: Sequence[int]) -> dict[int, FaceInfo]:
        out: dict[int, FaceInfo] = {}
        face_ids = [int(i) for i in set(face_ids)]
        with self.Session() as s:
            for i in range(0, len(face_ids), 500):
                rows = s.execute(
                    select(Face.id, Identity.name, Face.source).join(Identity)
                    .where(Face.id.in_(face_ids[i : i + 500]))
                )
                out.update({fid: FaceInfo(fid, name, src) for fid, name, src in rows})
        return out


    def count_faces(self, model_id: int | None = None) -> int:
        with self.Session() as s:
            q = select(func.count(Face.id))
            if model_id is not None:
                q = q.where(Face.model_id == model_id)
            return int(s.scalar(q))

    def model_ids_in_use(self) -> set[int]:
        with self.Session() as s:
            return set(s.scalars(select(Face.model_id).distinct()))


    def remove_faces(self, face_ids: Sequence[int]) -> tuple[list[int], int]:
        with self.Session.begin() as s:
            found = list(s.scalars(select(Face.id).where(Face.id.in_(list(face_ids)))))
            for f in s.scalars(select(Face).where(Face.id.in_(found))):
                s.delete(f)
            s.flush()
            return found, self._bump(s)
