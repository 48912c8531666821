"""The store's models (the encoders that embedded its faces), and switching the gallery to another one
(``reindex --model``): embeddings staged beside the faces, then swapped in in one transaction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import and_, delete, func, insert as insert_, select, update

from facesearch.store.dialects import lock_against_removal, upsert
from facesearch.store.revision import StorePart
from facesearch.store.schema import Face, FaceCrop, ModelRecord, StagedEmbedding


class ModelsMixin(StorePart):
    """:class:`~facesearch.store.Store`'s methods on models and on switching between them."""

    def register_model(self, key: str, config: dict, weights_sha256: str, location: str) -> ModelRecord:
        with self.Session.begin() as s:
            rec = s.scalar(select(ModelRecord).where(ModelRecord.key == key))
            if rec is None:
                rec = ModelRecord(
                    key=key, name=config["name"], version=str(config.get("format_version", 1)),
                    embedding_dim=int(config["embedding_dim"]), distance=config["distance"],
                    threshold=config.get("threshold"), weights_sha256=weights_sha256,
                    preprocessing={k: config[k] for k in ("input_size", "crop_fraction", "mean", "std")},
                    config=config, location=location, active=False,
                )
                s.add(rec)
                s.flush()
            return rec

    def active_model(self) -> ModelRecord | None:
        with self.Session() as s:
            return s.scalar(select(ModelRecord).where(ModelRecord.active.is_(True)))

    def set_active_model(self, model_id: int) -> None:
        with self.Session.begin() as s:
            s.execute(update(ModelRecord).values(active=False))
            s.execute(update(ModelRecord).where(ModelRecord.id == model_id).values(active=True))
            self._bump(s)

    def stage_embeddings(self, model_id: int, updates: Sequence[tuple[int, np.ndarray]],
                         content: dict[int, str] | None = None) -> None:
        """Keep ``(face_id, embedding)`` of model ``model_id`` beside the faces, for :meth:`switch_model`.
        The gallery does not change (no new revision): searches go on with its current embeddings.
        ``content``: face id -> the content SHA-256 the embedding was made from (as :meth:`iter_crops`
        gives it); a face whose id now holds other content is left out."""
        rows = {int(f): np.ascontiguousarray(e, dtype="<f4").tobytes() for f, e in updates}
        with self.Session.begin() as s:
            # a face removed since its crop was read is left out (its row would break the foreign key), and
            # so is a face enrolled since under the same id (SQLite gives a removed last id to the next
            # face); the rows kept are locked against removal until this commits (PostgreSQL; SQLite: write
            # lock)
            q = lock_against_removal(select(Face.id, Face.content_sha256).where(Face.id.in_(list(rows))),
                                     self.engine.dialect.name)
            alive = {fid for fid, sha in s.execute(q) if content is None or content.get(fid) == sha}
            values = [{"face_id": f, "model_id": model_id, "embedding": e} for f, e in rows.items() if f in alive]
            insert = upsert(self.engine.dialect.name)
            if not values:
                return
            if insert is not None:  # staged again (a rerun, or two runs at once) replaces, never collides
                ins = insert(StagedEmbedding).values(values)
                s.execute(ins.on_conflict_do_update(index_elements=["face_id", "model_id"],
                                                    set_={"embedding": ins.excluded.embedding}))
            else:  # another database: replace by delete and insert
                s.execute(delete(StagedEmbedding).where(StagedEmbedding.model_id == model_id,
                                                        StagedEmbedding.face_id.in_([v["face_id"] for v in values])))
                s.execute(insert_(StagedEmbedding), values)

    def unstage_others(self, model_id: int, own_too: bool = False) -> int:
        """Drop the embeddings staged for any model but ``model_id`` (reindexes given up), and with
        ``own_too`` those staged for it as well; returns how many."""
        with self.Session.begin() as s:
            q = delete(StagedEmbedding)
            return s.execute(q if own_too else q.where(StagedEmbedding.model_id != model_id)).rowcount

    def count_staged(self, model_id: int) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(StagedEmbedding)
                                .where(StagedEmbedding.model_id == model_id)))

    def switch_model(self, model_id: int) -> int:
        """Make ``model_id`` the gallery's model in one transaction, if every face is embedded by it or
        has an embedding staged for it: the staged ones replace the faces' embeddings, the staging
        table is emptied. Else nothing changes. Returns how many faces lack one (0: switched).
        Together with the check in :meth:`add_faces` no face of the old model is added after it."""

        class _Left(Exception):
            pass

        staged = select(StagedEmbedding.embedding).where(StagedEmbedding.face_id == Face.id,
                                                         StagedEmbedding.model_id == model_id)
        try:
            with self.Session.begin() as s:
                s.execute(update(ModelRecord).values(active=False))  # takes the write lock first
                s.execute(update(ModelRecord).where(ModelRecord.id == model_id).values(active=True))
                left = int(s.scalar(select(func.count(Face.id)).where(Face.model_id != model_id,
                                                                         ~staged.exists())))
                if left:
                    raise _Left(left)
                s.execute(update(Face).where(staged.exists())
                          .values(embedding=staged.scalar_subquery(), model_id=model_id)
                          .execution_options(synchronize_session=False))
                s.execute(delete(StagedEmbedding))
                self._bump(s)
        except _Left as e:
            return e.args[0]
        return 0

    def model_location(self, model_id: int) -> str | None:
        with self.Session() as s:
            return s.scalar(select(ModelRecord.location).where(ModelRecord.id == model_id))

    def faces_by_model(self) -> list[tuple[ModelRecord, int]]:
        """``(model, number of faces it embedded)`` for each model that embedded any, most first."""
        with self.Session() as s:
            rows = s.execute(select(ModelRecord, func.count(Face.id)).join(Face, Face.model_id == ModelRecord.id)
                             .group_by(ModelRecord.id).order_by(func.count(Face.id).desc())).all()
            return [(m, int(n)) for m, n in rows]


    @staticmethod
    def _pending(model_id: int, own_too: bool, after: int = 0):
        """Faces with no embedding staged for model ``model_id`` and (unless ``own_too``) not embedded
        by it: what a reindex to it has left to do."""
        # "> after" here too: else PostgreSQL's plan reads every staged row on each chunk
        staged = select(StagedEmbedding.face_id).where(StagedEmbedding.face_id == Face.id,
                                                       StagedEmbedding.face_id > after,
                                                       StagedEmbedding.model_id == model_id)
        return ~staged.exists() if own_too else and_(Face.model_id != model_id, ~staged.exists())

    def count_pending(self, model_id: int, own_too: bool = False) -> int:
        """How many faces :meth:`iter_crops` with the same arguments yields."""
        with self.Session() as s:
            return int(s.scalar(select(func.count(Face.id)).where(self._pending(model_id, own_too))))

    def iter_crops(self, chunk: int = 256, pending_for: int | None = None, own_too: bool = False
                   ) -> Iterator[list[tuple[int, str, bytes | None, dict | None, str]]]:
        """Yield lists of ``(face_id, source, crop_png, detection, content_sha256)`` for re-embedding (with
        ``pending_for``: only faces with no embedding staged for that model, and unless ``own_too``,
        not embedded by it either)."""
        last = 0
        while True:
            q = (select(Face.id, Face.source, FaceCrop.crop_png, Face.detection, Face.content_sha256)
                 .outerjoin(FaceCrop, FaceCrop.face_id == Face.id).where(Face.id > last))
            if pending_for is not None:
                q = q.where(self._pending(pending_for, own_too, last))
            # a transaction per chunk, closed before the caller embeds it: one held for a whole pass
            # (an hour per million faces) would make `db upgrade` on PostgreSQL wait that long
            with self.Session() as s:
                rows = s.execute(q.order_by(Face.id).limit(chunk)).all()
            if not rows:
                return
            last = rows[-1][0]
            yield [tuple(r) for r in rows]

    def replace_embeddings(self, model_id: int, updates: Sequence[tuple[int, np.ndarray]]) -> int:
        """Set new embeddings (from model ``model_id``) for existing faces; returns the new revision."""
        with self.Session.begin() as s:
            for fid, emb in updates:
                s.execute(update(Face).where(Face.id == fid).values(
                    embedding=np.ascontiguousarray(emb, dtype="<f4").tobytes(), model_id=model_id))
            return self._bump(s)

