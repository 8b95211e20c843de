"""sftkit.distill.semdedup: blocked cosine dedup, local HF encoder, /v1/embeddings encoder, n-gram fallback."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from aiohttp import web

from sftkit.distill import semdedup as sd
from sftkit.testing.stub_server import StubServer
from sftkit.testing.tiny_encoder import build_tiny_encoder

# ---- blocked cosine dedup --------------------------------------------------------------------------------------


class TableEncoder:
    """Looks texts up in a fixed table of vectors; records the size of every call."""

    name = "table"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.calls: list[int] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return np.stack([self.table[t] for t in texts])


def brute_force(vecs: np.ndarray, threshold: float) -> list[bool]:
    v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    kept: list[int] = []
    keep = []
    for i in range(len(v)):
        dup = any(float(v[i] @ v[j]) >= threshold for j in kept)
        keep.append(not dup)
        if not dup:
            kept.append(i)
    return keep


def planted(n: int, dim: int, seed: int) -> np.ndarray:
    """Random vectors, a third of them near copies (small noise) of an earlier one."""
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    for i in range(n):
        if i and i % 3 == 0:
            vecs[i] = vecs[rng.integers(0, i)] + rng.normal(scale=0.05, size=dim)
    return vecs


@pytest.mark.parametrize("block_size, kept_chunk", [(1, 1), (3, 2), (7, 50), (100, 4), (1000, 1000)])
def test_cosine_dedup_equals_brute_force_for_any_block_and_chunk_size(block_size: int, kept_chunk: int) -> None:
    vecs = planted(60, 16, seed=block_size)
    texts = [f"t{i}" for i in range(len(vecs))]
    enc = TableEncoder(dict(zip(texts, vecs, strict=True)))
    res = sd.cosine_dedup(texts, enc, 0.95, block_size=block_size, kept_chunk=kept_chunk)
    assert res.keep == brute_force(vecs, 0.95)
    assert 10 <= res.removed <= 20
    assert max(enc.calls) <= block_size and sum(enc.calls) == len(texts)  # each text encoded once, in blocks
    v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    for i, (k, j, s) in enumerate(zip(res.keep, res.duplicate_of, res.similarity, strict=True)):
        if k:
            assert j is None and s is None
        else:
            assert j is not None and j < i and res.keep[j] and s == pytest.approx(float(v[i] @ v[j]), abs=1e-5)
            assert s >= 0.95


def test_cosine_dedup_keeps_the_first_of_a_pair_and_threshold_is_inclusive() -> None:
    table = {"a": np.array([1.0, 0.0]), "b": np.array([0.6, 0.8]), "c": np.array([2.0, 0.0]),
             "d": np.array([0.0, 1.0])}
    res = sd.cosine_dedup(["b", "a", "c", "d"], TableEncoder(table), 0.8, block_size=2)
    # a·b = 0.6 < 0.8, c duplicates a (cosine 1), d·b = 0.8 reaches the threshold
    assert res.keep == [True, True, False, False] and res.duplicate_of == [None, None, 1, 0]
    assert sd.cosine_dedup([], TableEncoder(table), 0.8).keep == []
    with pytest.raises(ValueError):
        sd.cosine_dedup(["a"], TableEncoder(table), 0.8, block_size=0)


# ---- local HF encoder -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


TEXTS = ["请说明办理学生证补办的流程。", "选课系统什么时候开放？", "请说明办理学生证补办的流程。",
         "图书馆周末晚上九点闭馆，节假日另行通知。", "The library closes at nine on weekends."]


def test_hf_encoder_embeds_in_order_normalised_and_batch_independent(encoder_dir: str) -> None:
    enc = sd.HFEncoder(encoder_dir, batch_size=2)
    v = enc.encode(TEXTS)
    assert v.shape == (5, 32) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([enc.encode([t]) for t in TEXTS])
    assert np.allclose(v, one_by_one, atol=1e-4)  # padding and length sorting change nothing
    sims = v @ v.T
    assert sims[0, 2] == pytest.approx(1.0, abs=1e-5) and sims[0, 1] < 0.99
    res = sd.cosine_dedup(TEXTS, enc, 0.99, block_size=2)
    assert res.keep == [True, True, False, True, True] and res.duplicate_of[2] == 0


def test_hf_encoder_reads_cls_pooling_from_sentence_transformers_dir(encoder_dir: str, tmp_path) -> None:
    import shutil

    st = tmp_path / "st"
    shutil.copytree(encoder_dir, st)
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_bytes(orjson.dumps({"pooling_mode_cls_token": True,
                                                                  "pooling_mode_mean_tokens": False}))
    cls = sd.HFEncoder(str(st))
    assert cls.pooling == "cls" and sd.HFEncoder(encoder_dir).pooling == "mean"
    assert not np.allclose(cls.encode(TEXTS[:2]), sd.HFEncoder(encoder_dir).encode(TEXTS[:2]))


# ---- OpenAI-compatible /v1/embeddings -------------------------------------------------------------------------


class EmbeddingServer(StubServer):
    """The stub server plus /v1/embeddings: hashed character bigram vectors, rows returned in reverse order
    (clients must sort by `index`), and a scripted status for the first requests."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__()
        self.statuses = list(statuses or [])
        self.embed_bodies: list[dict] = []

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/embeddings", self._embed)
        return app

    async def _embed(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.embed_bodies.append(body)
        self.headers.append(dict(request.headers))
        if self.statuses:
            status = self.statuses.pop(0)
            return web.Response(status=status, body=b'{"error": "scripted"}', headers={"Retry-After": "0"})
        vecs = sd.HashEncoder(dim=64).encode(body["input"])
        data = [{"object": "embedding", "index": i, "embedding": vecs[i].tolist()} for i in range(len(vecs))]
        return web.json_response({"object": "list", "data": data[::-1], "model": body["model"],
                                  "usage": {"prompt_tokens": 3 * len(vecs), "total_tokens": 3 * len(vecs)}})


def test_api_encoder_batches_sorts_by_index_and_retries() -> None:
    with EmbeddingServer(statuses=[429, 503]) as srv:
        enc = sd.APIEncoder(srv.base_url, "emb-model", "sk-embed-key", batch_size=2, max_concurrency=1,
                            backoff_base=0.0)
        v = enc.encode(TEXTS)
        res = sd.cosine_dedup(TEXTS, enc, 0.99, block_size=4)
    assert np.allclose(v, sd.HashEncoder(dim=64).encode(TEXTS), atol=1e-6)
    assert [len(b["input"]) for b in srv.embed_bodies][-3:] == [2, 2, 1]
    assert enc.requests == len(srv.embed_bodies) and len(srv.embed_bodies) == 2 + 3 + 3  # 2 retried, 2 encodes
    assert all(b["model"] == "emb-model" for b in srv.embed_bodies)
    assert {h.get("Authorization") for h in srv.headers} == {"Bearer sk-embed-key"}
    assert "sk-embed-key" not in repr(enc)
    assert res.keep == [True, True, False, True, True]
    assert enc.usage_tokens == 2 * 3 * len(TEXTS)


def test_api_encoder_gives_up_on_client_errors_and_after_retries() -> None:
    with EmbeddingServer(statuses=[400]) as srv:
        with pytest.raises(sd.EmbeddingError, match="HTTP 400"):
            sd.APIEncoder(srv.base_url, "m", backoff_base=0.0).encode(["一"])
    with EmbeddingServer(statuses=[500, 500, 500]) as srv:
        with pytest.raises(sd.EmbeddingError, match="after 3 attempts"):
            sd.APIEncoder(srv.base_url, "m", retries=2, backoff_base=0.0).encode(["一"])
        assert len(srv.embed_bodies) == 3


# ---- without embeddings: the n-gram dedup is sftkit.clean.neardup's (tests/test_neardup.py) --------------------------


def test_hash_encoder_is_deterministic() -> None:
    v = sd.HashEncoder(dim=128).encode(["选课系统", "选课系统", "图书馆"])
    assert np.allclose(v[0], v[1]) and not np.allclose(v[0], v[2])
