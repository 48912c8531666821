"""Vectors in Milvus (a server or cluster by URI, or milvus-lite in a local file) through pymilvus.

One collection per gallery: primary key ``id`` = the store's face id (INT64, not auto), ``vec`` a
FLOAT_VECTOR, metric ``IP`` on the unit vectors (the one distance: :func:`facesearch.distance.from_similarity`
turns Milvus's inner products into distances), an HNSW index, strong consistency (a face written is
found by the next search, from any process). pymilvus is imported here only (``facesearch[milvus]``).
"""

from __future__ import annotations

import numpy as np

from facesearch import distance
from facesearch.errors import FaceSearchError
from facesearch.index.base import SharedIndex

PK, VEC = "id", "vec"
#: the HNSW graph: M links per node, efConstruction; ef at search time is max(k, EF_SEARCH)
HNSW_M, HNSW_EF_CONSTRUCTION, EF_SEARCH = 16, 200, 64
#: the collection property that keeps the ef a rebuild measured (:func:`facesearch.index.policy.tune_search`)
EF_PROPERTY = "facesearch.ef_search"
#: Milvus refuses a search for more than this many neighbours
MAX_TOPK = 16384
#: rows per insert request (a request is limited in size: 64 MB by default)
INSERT_ROWS = 5000


def _client(uri: str, token: str):
    try:
        from pymilvus import MilvusClient
    except ImportError as e:
        raise FaceSearchError("--vectors milvus needs pymilvus (and milvus-lite for a local file): "
                              "pip install 'facesearch[milvus]'") from e
    try:
        return MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
    except Exception as e:  # a server that does not answer, a file that cannot be opened
        raise FaceSearchError(f"cannot reach Milvus at {uri}: {e}") from e


class MilvusIndex(SharedIndex):
    backend = "milvus"

    def __init__(self, uri: str, collection: str, dim: int, token: str = "", location: str = ""):
        self.uri, self.collection, self.dim = uri, collection, int(dim)
        self.location = location or f"{uri}/{collection}"
        self.factory = f"HNSW{HNSW_M}"
        self.ef_search = EF_SEARCH
        self.client = _client(uri, token)
        if self.client.has_collection(collection):
            have = self._stored_dim()
            if have != self.dim:
                raise FaceSearchError(
                    f"Milvus collection {collection!r} holds {have}-d vectors, this gallery's model gives "
                    f"{self.dim}-d ones: use another collection, or `facesearch reindex` to rebuild it")
            self.client.load_collection(collection)  # a server may have released it (a restart): searchable again
            kept = self.client.describe_collection(collection).get("properties", {}).get(EF_PROPERTY)
            if kept is not None and str(kept).isdigit():
                self.ef_search = int(kept)
        else:
            self._create()

    def _stored_dim(self) -> int | None:
        desc = self.client.describe_collection(self.collection)
        for f in desc.get("fields", []):
            if f.get("name") == VEC:
                return int(f.get("params", {}).get("dim"))
        return None

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(PK, DataType.INT64, is_primary=True)
        schema.add_field(VEC, DataType.FLOAT_VECTOR, dim=self.dim)
        params = self.client.prepare_index_params()
        params.add_index(field_name=VEC, index_type="HNSW", metric_type="IP",
                         params={"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION})
        self.client.create_collection(self.collection, schema=schema, index_params=params,
                                      consistency_level="Strong")

    @property
    def ntotal(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def add(self, ids, x) -> None:
        ids = np.asarray(ids, np.int64)
        x = np.ascontiguousarray(x, np.float32)
        if x.shape != (len(ids), self.dim):
            raise ValueError(f"vectors are {x.shape}, expected ({len(ids)}, {self.dim})")
        for i in range(0, len(ids), INSERT_ROWS):
            rows = [{PK: int(fid), VEC: v} for fid, v in zip(ids[i:i + INSERT_ROWS], x[i:i + INSERT_ROWS])]
            self.client.upsert(self.collection, rows)  # upsert: a repair or a retry writes a face once

    def _held(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for i in range(0, len(ids), 1000):
            part = ids[i:i + 1000]
            out += [int(r[PK]) for r in self.client.query(self.collection, ids=part, output_fields=[PK])]
        return out

    def remove(self, ids) -> int:
        ids = sorted({int(i) for i in ids})
        held = self._held(ids)
        if held:
            self.client.delete(self.collection, ids=held)
        return len(held)

    def search(self, queries, k: int):
        q = np.atleast_2d(np.ascontiguousarray(queries, np.float32))
        k = max(1, min(int(k), MAX_TOPK))
        hits = self.client.search(self.collection, data=q, limit=k, anns_field=VEC, output_fields=[PK],
                                  search_params={"metric_type": "IP", "params": {"ef": max(k, self.ef_search)}})
        dist = np.full((len(q), k), np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for r, row in enumerate(hits):
            for c, h in enumerate(row[:k]):
                ids[r, c] = int(h["id"])
                dist[r, c] = h["distance"]
        found = ids >= 0
        dist[found] = distance.clip(distance.from_similarity(dist[found]))
        return dist, ids

    def ids(self) -> np.ndarray:
        import logging

        # the iterator logs a warning on every call against milvus-lite (no server timestamp): not ours to show
        logging.getLogger("pymilvus").setLevel(logging.ERROR)
        it = self.client.query_iterator(self.collection, batch_size=10_000, filter=f"{PK} >= -1",
                                        output_fields=[PK])
        out = []
        try:
            while batch := it.next():
                out.append(np.fromiter((r[PK] for r in batch), np.int64, len(batch)))
        finally:
            it.close()
        return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)

    def vectors(self, ids) -> dict[int, np.ndarray]:
        ids = [int(i) for i in ids]
        out = {}
        for i in range(0, len(ids), 1000):
            for r in self.client.get(self.collection, ids=ids[i:i + 1000], output_fields=[VEC]):
                out[int(r[PK])] = np.asarray(r[VEC], np.float32)
        return out

    def set_ef_search(self, ef: int, keep: bool = False) -> None:
        self.ef_search = int(ef)
        if keep:
            self.client.alter_collection_properties(self.collection, properties={EF_PROPERTY: str(int(ef))})

    def reset(self) -> None:
        self.client.drop_collection(self.collection)
        self._create()
        self.ef_search = EF_SEARCH

    def memory_bytes(self) -> int:
        """An estimate: the float32 vectors and the HNSW graph (2 M links of 4 bytes on the base layer)."""
        return self.ntotal * (self.dim * 4 + 8 + 2 * HNSW_M * 4)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
