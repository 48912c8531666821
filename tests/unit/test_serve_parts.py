"""The HTTP service's parts on their own: the micro-batcher, the token buckets, the metrics text, the
keys (a real SQLite store) and the names uploads are enrolled under."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from facesearch.errors import FaceSearchError
from facesearch.serve.batching import MicroBatcher
from facesearch.serve.limits import TokenBuckets
from facesearch.serve.metrics import Metrics
from facesearch.serve.service import ServeConfig, upload_source
from facesearch.store import Store
from facesearch.store import keys


def crops(n: int, value: int) -> list[np.ndarray]:
    return [np.full((3, 4, 4), value + i, np.uint8) for i in range(n)]


def fake_embed(calls):
    def embed(batch):
        calls.append(len(batch))
        return np.stack([c.reshape(-1)[:2].astype(np.float32) for c in batch])
    return embed


def test_the_batcher_gives_each_request_its_own_rows_and_batches_those_that_wait_together():
    calls: list[int] = []
    b = MicroBatcher(fake_embed(calls), max_batch=64, max_wait_s=0.05)
    try:
        futures, start = [], threading.Barrier(8)

        def client(i):
            start.wait()
            futures.append((i, b.submit(crops(i + 1, 10 * i))))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, f in futures:
            rows = f.result(5)
            assert rows.shape == (i + 1, 2)
            assert rows[:, 0].tolist() == [10 * i + k for k in range(i + 1)]  # its own crops, in order
        assert sum(calls) == sum(range(1, 9)) and len(calls) < 8  # fewer forward passes than requests
    finally:
        b.close()


def test_the_batcher_caps_a_batch_and_one_bad_request_does_not_fail_the_others():
    calls: list[int] = []

    def embed(batch):
        if any(c[0, 0, 0] == 255 for c in batch):
            raise ValueError("bad crop")
        return fake_embed(calls)(batch)

    b = MicroBatcher(embed, max_batch=4, max_wait_s=0.05)
    try:
        good = [b.submit(crops(3, 0)) for _ in range(3)]
        bad = b.submit([np.full((3, 4, 4), 255, np.uint8)])
        for f in good:
            assert f.result(5).shape == (3, 2)
        with pytest.raises(ValueError, match="bad crop"):
            bad.result(5)
        assert max(calls) <= 6  # a batch takes requests until max_batch crops (one request is never split)
    finally:
        b.close()
    assert b.submit(crops(1, 0)).exception(1) is not None  # closed: refused, not left waiting


def test_token_buckets_allow_the_burst_then_the_rate_per_client():
    tb = TokenBuckets(rate=10, burst=3)
    assert [tb.take("a")[0] for _ in range(3)] == [True] * 3
    ok, wait = tb.take("a")
    assert not ok and 0 < wait <= 0.1 + 1e-6
    assert tb.take("b")[0]  # another client has its own bucket
    time.sleep(0.12)
    assert tb.take("a")[0]
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1)


def test_metrics_render_counters_and_cumulative_histograms():
    m = Metrics()
    for s in (0.002, 0.02, 3.0):
        m.request("/v1/query", "POST", 200, s)
    m.request("/v1/query", "POST", 429, 0.0001)
    m.batch(5)
    text = m.render({"facesearch_gallery_faces": ("Faces.", 12)})
    lines = text.splitlines()
    assert 'facesearch_requests_total{route="/v1/query",method="POST",status="200"} 3' in lines
    assert 'facesearch_requests_total{route="/v1/query",method="POST",status="429"} 1' in lines
    assert 'facesearch_request_duration_seconds_bucket{route="/v1/query",le="0.001"} 1' in lines
    assert 'facesearch_request_duration_seconds_bucket{route="/v1/query",le="0.025"} 3' in lines
    assert 'facesearch_request_duration_seconds_bucket{route="/v1/query",le="+Inf"} 4' in lines
    assert 'facesearch_request_duration_seconds_count{route="/v1/query"} 4' in lines
    assert 'facesearch_embed_batch_size_bucket{le="8"} 1' in lines and "facesearch_gallery_faces 12" in lines
    assert "# TYPE facesearch_request_duration_seconds histogram" in lines and text.endswith("\n")


def test_keys_are_kept_as_hashes_scoped_and_revocable(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        key, info = keys.create(store, "write", "ci")
        assert key.startswith("fsk_") and len(key) == 47 and info.prefix == key[:12]
        assert keys.lookup(store, key).scope == "write"
        assert keys.lookup(store, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert keys.lookup(store, "not a key") is None and keys.lookup(store, "fsk_" + "x" * 500) is None
        assert keys.allows("write", "read") and keys.allows("write", "write") and not keys.allows("write", "admin")
        other, _ = keys.create(store, "read")
        assert other != key
        assert keys.revoke(store, info.id).active is False
        assert keys.lookup(store, key) is None and keys.lookup(store, other) is not None
        assert keys.revoke(store, info.id).active is False  # again: nothing changes
        assert [k.active for k in keys.list_keys(store)] == [False, True]
        with pytest.raises(FaceSearchError, match="no key with id 99"):
            keys.revoke(store, 99)
        with pytest.raises(FaceSearchError, match="unknown scope"):
            keys.create(store, "root")
    finally:
        store.close()
    assert key.encode() not in (tmp_path / "k.db").read_bytes()


@pytest.mark.parametrize("given, source", [
    ("photo.jpg", "upload:photo.jpg"),
    ("../../etc/passwd", "upload:passwd"),
    ("C:\\Users\\me\\face.png", "upload:face.png"),
    ("/abs/path/x.webp", "upload:x.webp"),
    ("", "upload:file-3"),
    (None, "upload:file-3"),
    ("..", "upload:file-3"),
    ("a\x00b\nc.png", "upload:a\\x00b\\x0ac.png"),
])
def test_an_upload_is_enrolled_under_its_base_name_only(given, source):
    assert upload_source(given, 3) == source


def test_no_auth_only_on_loopback():
    ServeConfig(host="127.0.0.1", auth=False).check()
    ServeConfig(host="::1", auth=False).check()
    ServeConfig(host="0.0.0.0", auth=True).check()
    with pytest.raises(FaceSearchError, match="loopback"):
        ServeConfig(host="0.0.0.0", auth=False).check()


def test_batcher_workers_embed_side_by_side():
    """Two workers: two batches are embedded at the same time (each waits for the other at a barrier,
    which one worker alone could never pass)."""
    met = threading.Barrier(2, timeout=5)

    def embed(batch):
        met.wait()
        return np.zeros((len(batch), 2), np.float32)

    b = MicroBatcher(embed, max_batch=1, max_wait_s=0.0, workers=2)
    try:
        first, second = b.submit(crops(1, 0)), b.submit(crops(1, 1))
        assert first.result(10).shape == second.result(10).shape == (1, 2)
    finally:
        b.close()
        b.close()  # twice: nothing happens
