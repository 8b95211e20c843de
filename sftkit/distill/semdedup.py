"""Semantic near-duplicate removal.

`cosine_dedup` walks texts in priority order (best first) and keeps a text unless its embedding's cosine
similarity to an already kept one reaches the threshold, so of a duplicate pair the earlier (higher-scored)
one survives. Embeddings are computed one block at a time and compared against the kept set in chunks:
memory is kept x dim floats plus block x chunk similarities, never an n x n matrix.

Encoders (all return L2-normalised float32 rows):
- `HFEncoder`: a local transformers / sentence-transformers model directory, mean pooling over the
  attention mask (CLS when the directory's 1_Pooling config says so);
- `APIEncoder`: an OpenAI-compatible `/v1/embeddings` endpoint over aiohttp, batched, concurrent, retried;
- `HashEncoder`: hashed character n-grams; deterministic, no model (a cheap stand-in for benchmarks).

`ngram_dedup` is the fallback without embeddings, and the same code as prep's near-dedup (sftkit.clean.neardup): MinHash
over character n-grams (or jieba words) with LSH banding for candidates and the exact Jaccard to confirm. Never
whitespace tokens: Chinese has none.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import regex

from sftkit.clean import neardup
from sftkit.clean.dedup_keys import make_keys

log = logging.getLogger(__name__)


class Encoder(Protocol):
    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class DedupResult:
    keep: list[bool]
    duplicate_of: list[int | None]  # index (in the input order given) of the kept text it duplicates
    similarity: list[float | None]
    method: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return sum(not k for k in self.keep)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"encoder returned shape {x.shape}, expected (n, dim)")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def cosine_dedup(texts: Sequence[str], encoder: Encoder, threshold: float, *, block_size: int = 1024,
                 kept_chunk: int = 8192, progress: Callable[[int], None] | None = None) -> DedupResult:
    """Greedy dedup in the given order (put the best texts first). A text is dropped when its cosine to
    any kept text is >= threshold. Peak memory: kept x dim + block_size x max(block_size, kept_chunk)."""
    if block_size < 1 or kept_chunk < 1:
        raise ValueError("block_size and kept_chunk must be >= 1")
    n = len(texts)
    keep = [False] * n
    dup_of: list[int | None] = [None] * n
    sim_of: list[float | None] = [None] * n
    chunks: list[np.ndarray] = []  # kept embeddings, in chunks of <= kept_chunk rows
    chunk_ids: list[list[int]] = []
    for start in range(0, n, block_size):
        block = list(texts[start:start + block_size])
        emb = _normalise_rows(encoder.encode(block))
        if emb.shape[0] != len(block):
            raise ValueError(f"encoder returned {emb.shape[0]} rows for {len(block)} texts")
        best = np.full(len(block), -np.inf, dtype=np.float32)
        best_at = np.full(len(block), -1, dtype=np.int64)
        for chunk, ids in zip(chunks, chunk_ids, strict=True):
            sims = emb @ chunk.T
            arg = sims.argmax(axis=1)
            val = sims[np.arange(len(block)), arg]
            better = val > best
            best[better] = val[better]
            best_at[better] = np.asarray(ids)[arg[better]]
        new_rows: list[int] = []
        for i in range(len(block)):
            if best[i] >= threshold:
                dup_of[start + i] = int(best_at[i])
                sim_of[start + i] = float(best[i])
                continue
            keep[start + i] = True
            new_rows.append(i)
            if i + 1 < len(block):  # later texts of this block also compare against this newly kept one
                sims = emb[i + 1:] @ emb[i]
                better = sims > best[i + 1:]
                best[i + 1:][better] = sims[better]
                best_at[i + 1:][better] = start + i
        placed = 0
        while placed < len(new_rows):
            if not chunks or len(chunk_ids[-1]) >= kept_chunk:
                chunks.append(np.empty((0, emb.shape[1]), dtype=np.float32))
                chunk_ids.append([])
            take = new_rows[placed:placed + kept_chunk - len(chunk_ids[-1])]
            chunks[-1] = np.concatenate([chunks[-1], emb[take]])
            chunk_ids[-1].extend(start + i for i in take)
            placed += len(take)
        if progress:
            progress(len(block))
    return DedupResult(keep, dup_of, sim_of, method=f"cosine:{encoder.name}",
                       stats={"threshold": threshold, "block_size": block_size})


# ---- encoders --------------------------------------------------------------------------------------------


class HFEncoder:
    """A local transformers / sentence-transformers encoder directory; mean pooling unless the directory's
    `1_Pooling/config.json` asks for the CLS token."""

    def __init__(self, path: str, *, max_length: int = 256, batch_size: int = 32, device: str = "cpu",
                 pooling: str | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.name = f"hf:{Path(path).name}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        self.pooling = pooling or self._pooling_from_dir(Path(path))
        # Pass only the inputs the model takes (DistilBERT, for one, has no token_type_ids).
        import inspect

        self._inputs = set(inspect.signature(self.model.forward).parameters)

    @staticmethod
    def _pooling_from_dir(path: Path) -> str:
        cfg = path / "1_Pooling" / "config.json"
        if cfg.is_file():
            try:
                data = orjson.loads(cfg.read_bytes())
            except orjson.JSONDecodeError:
                return "mean"
            if data.get("pooling_mode_cls_token") and not data.get("pooling_mode_mean_tokens"):
                return "cls"
        return "mean"

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        out: list[np.ndarray | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items() if k in self._inputs}
                hidden = self.model(**enc).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                vecs = pooled.float().cpu().numpy()
                for row, i in enumerate(idx):
                    out[i] = vecs[row]
        return _normalise_rows(np.stack(out)) if texts else np.zeros((0, 1), np.float32)  # type: ignore[arg-type]


class EmbeddingError(RuntimeError):
    pass


class APIEncoder:
    """OpenAI-compatible `POST {base_url}/embeddings` with {"model", "input": [...]}; batched and concurrent,
    with the shared client's retry policy (429/5xx/connection errors, backoff, Retry-After). The key is sent,
    never shown."""

    def __init__(self, base_url: str, model: str, api_key: str = "", *, batch_size: int = 64,
                 max_concurrency: int = 4, timeout: float = 60.0, retries: int = 5, backoff_base: float = 1.0,
                 seed: int = 0) -> None:
        self.base_url = base_url
        self.model = model
        self.name = f"api:{model}"
        self._api_key = api_key
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.seed = seed
        self.requests = 0  # HTTP attempts, retries included
        self.usage_tokens = 0

    def __repr__(self) -> str:  # never show the key
        return f"APIEncoder(url={self.base_url!r}, model={self.model!r})"

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), np.float32)
        return _normalise_rows(asyncio.run(self._encode(texts)))

    async def _encode(self, texts: list[str]) -> np.ndarray:
        from sftkit.llm.client import AsyncChatClient, ChatError

        batches = [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        async with AsyncChatClient(self.base_url, self._api_key, max_concurrency=self.max_concurrency,
                                   timeout=self.timeout, retries=self.retries, backoff_base=self.backoff_base,
                                   seed=self.seed) as client:
            try:
                results = await asyncio.gather(*(self._batch(client, b) for b in batches))
            except ChatError as e:
                if not e.exhausted:
                    hint = " (key refused)" if e.fatal else ""
                    raise EmbeddingError(f"embeddings endpoint answered HTTP {e.reason[5:]}{hint}: "
                                         f"{e.detail}") from None
                raise EmbeddingError(f"embeddings request failed after {e.attempts} attempts: {e.reason}") from None
            finally:
                self.requests += client.stats.requests + sum(client.stats.retries.values())
        return np.concatenate(results)

    async def _batch(self, client: Any, batch: list[str]) -> np.ndarray:
        from sftkit.llm.client import RetryableError

        def parse(data: Any) -> tuple[np.ndarray, int]:
            try:
                rows = sorted(data["data"], key=lambda r: r.get("index", 0))
                vecs = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise RetryableError("bad_response", type(e).__name__) from None
            if vecs.ndim != 2 or len(vecs) != len(batch):
                raise RetryableError("bad_response", f"{len(vecs)} vectors for {len(batch)} texts")
            return vecs, int((data.get("usage") or {}).get("prompt_tokens") or 0)

        (vecs, tokens), _ = await client.post_json("/embeddings", {"model": self.model, "input": batch}, parse)
        self.usage_tokens += tokens
        return vecs


class HashEncoder:
    """Hashed character n-gram counts (no model): the n-gram features of near-dedup (sftkit.clean.neardup) folded into
    `dim` buckets. Deterministic; for benchmarks and as a last resort."""

    def __init__(self, dim: int = 1024, n: int = 2) -> None:
        self.dim, self.n = dim, n
        self.name = f"hash{n}x{dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        h, nfeat = neardup.ngram_features(make_keys(texts), self.n)
        out = np.zeros((len(texts), self.dim), np.float32)
        rows = np.repeat(np.arange(len(texts)), nfeat)
        np.add.at(out, (rows, (h % np.uint64(self.dim)).astype(np.int64)), 1.0)
        return _normalise_rows(out)


# ---- without embeddings: the near-dedup of prep (sftkit.clean.neardup) ---------------------------------------

_PUNCT_OR_SPACE = regex.compile(r"[\p{P}\p{S}\p{Z}\s]+")


def jieba_words(text: str, n: int = 1) -> list[str]:
    """jieba words of the lower-cased, NFKC-folded text (punctuation and spaces dropped), as n-word shingles."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    words = [w for w in jieba.lcut(unicodedata.normalize("NFKC", text).lower()) if not _PUNCT_OR_SPACE.fullmatch(w)]
    if n <= 1:
        return words
    if len(words) <= n:  # fewer words than a shingle: the whole text is one
        return ["\x1f".join(words)] if words else []
    return ["\x1f".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def ngram_dedup(texts: Sequence[str], *, tokenizer: str = "char", n: int = 3, threshold: float = 0.7,
                num_perm: int = 128, bands: int = 32, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> DedupResult:
    """Greedy dedup in the given order: a text is dropped when the Jaccard similarity of its shingle set with an
    already kept text's is >= threshold. Exactly prep's near-dedup (sftkit.clean.neardup: MinHash LSH candidates, each
    confirmed by the exact Jaccard, so no false positives): `char` shingles are the character n-grams of the dedup
    key (letters and digits, lower case, full width folded), `jieba` ones are n-word shingles."""
    if bands < 1 or num_perm % bands:
        raise ValueError("num_perm must be a multiple of bands")
    params = neardup.MinHashParams(ngram=n, num_perm=num_perm, bands=bands, rows=num_perm // bands,
                                   threshold=threshold, seed=seed)
    if tokenizer == "char":
        h, nfeat = neardup.ngram_features(make_keys(list(texts)), n)
    elif tokenizer == "jieba":
        h, nfeat = neardup.word_features([jieba_words(t, n) for t in texts])
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r} (char or jieba)")
    result, compared = neardup.near_duplicates_of_features(h, nfeat, params)
    if progress:
        progress(len(texts))
    dropped = result.dropped.tolist()
    causes = result.cause.tolist()
    sims = result.similarity.tolist() if result.similarity is not None else [0.0] * len(dropped)
    return DedupResult(keep=[not d for d in dropped],
                       duplicate_of=[int(c) if d else None for d, c in zip(dropped, causes, strict=True)],
                       similarity=[s if d else None for d, s in zip(dropped, sims, strict=True)],
                       method=f"ngram:{tokenizer}{n}",
                       stats={"threshold": threshold, "candidates_checked": compared,
                              "pairs_confirmed": result.pairs_checked})
