"""The records that passed the filters, held on disk until dedup and mixing decide what is written where.

`RecordPool` keeps the serialized lines in an anonymous temp file beside the output and, per kept record (not an
exact duplicate, not over a source's cap), numpy arrays: offset, length, source number, near-dedup signature.
`write_records` writes a chosen sequence of pooled records (repeats get `-rN` ids) as records or the seed's
ChatML text.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sftkit.io.jsonl import atomic_write
from sftkit.io.records import to_seed_chatml_text


class RecordPool:
    """Records that passed the filters, as serialized lines in an anonymous temp file beside the output, plus
    per-record arrays for the kept ones (not exact duplicates, not over a cap).

    The file is unlinked as soon as it is created and used through its descriptor only, so a killed run
    leaves nothing behind; only the records are on disk, which keeps memory flat however big the input.
    """

    def __init__(self, out: Path, every_offset: bool = False) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.pool-", dir=out.parent)
        os.unlink(name)
        self.file = os.fdopen(fd, "w+b")
        self.size = 0
        self.seq = 0  # records written so far, kept or not
        self.every_offset: list[np.ndarray] | None = [] if every_offset else None  # by seq (for the report)
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("offset", "length", "source", "near")}

    def add(self, blob: bytes, lens: np.ndarray, keep: np.ndarray, source: int, near: np.ndarray) -> None:
        offsets = self.size + np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
        self.file.write(blob)
        self.size += len(blob)
        self.seq += len(lens)
        if self.every_offset is not None:
            self.every_offset.append(offsets)
        self.parts["offset"].append(offsets[keep])
        self.parts["length"].append(lens[keep])
        self.parts["source"].append(np.full(int(keep.sum()), source, dtype=np.int16))
        self.parts["near"].append(near[keep])

    def arrays(self) -> dict[str, np.ndarray]:
        self.file.flush()
        dtypes = {"offset": np.int64, "length": np.int64, "source": np.int16, "near": np.uint64}
        return {k: (np.concatenate(v) if v else np.zeros(0, dtypes[k])) for k, v in self.parts.items()}

    def record_at(self, offset: int) -> dict[str, Any]:
        """The record whose line starts at `offset` (a few reads: no mapping of the whole file stays around)."""
        self.file.flush()
        chunks = []
        while True:
            chunk = os.pread(self.file.fileno(), 1 << 16, offset)
            end = chunk.find(b"\n")
            if end >= 0 or not chunk:
                chunks.append(chunk[:end] if end >= 0 else chunk)
                return orjson.loads(b"".join(chunks))
            chunks.append(chunk)
            offset += len(chunk)

    def close(self) -> None:
        self.file.close()


def write_records(path: Path, pool: RecordPool, arrays: dict[str, np.ndarray], chosen: np.ndarray,
                  chatml_text: bool = False) -> int:
    """Write the chosen pool records in order, atomically; repeats (--upsample) get `-rN` ids."""
    offsets, lengths = arrays["offset"], arrays["length"]
    copies: Counter[int] = Counter()
    n = 0
    with atomic_write(path, "wb") as f:
        if pool.size == 0:
            return 0
        pool.file.flush()
        with mmap.mmap(pool.file.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf: list[bytes] = []
            for idx in chosen.tolist():
                line = mm[offsets[idx]:offsets[idx] + lengths[idx]]
                copies[idx] += 1
                rep = copies[idx]
                if rep > 1 or chatml_text:
                    rec = orjson.loads(line)
                    if rep > 1:
                        rec["id"] = f"{rec['id']}-r{rep}"
                    if chatml_text:
                        rec = {"text": to_seed_chatml_text(rec["messages"])}
                    line = orjson.dumps(rec) + b"\n"
                buf.append(line)
                n += 1
                if len(buf) >= 8192:
                    f.write(b"".join(buf))
                    buf.clear()
            f.write(b"".join(buf))
    return n
