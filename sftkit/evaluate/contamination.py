"""Contamination: held-out prompts that are (near-)copies of training data (--train-file).

An eval prompt is contaminated when the text of its user turns is a near-duplicate of the user turns of some
training record, by the project's one near-duplicate rule (sftkit/clean/neardup.py, the MinHash LSH of prep and
judge at their defaults: character 3-grams of the dedup key, 128 bins, 32 bands of 4, confirmed by the exact
Jaccard similarity of the two n-gram sets >= 0.7). Only user turns count: the answer is what the model is asked to
produce, and a training record that asked the same question is what makes the prompt seen.

Training files: JSON Lines or one JSON array, optionally gzip-compressed, any record form SPEC lists (the readers
of prep: sftkit/io/blocks.py). Unreadable lines and elements are counted, not fatal (a training set is what it is).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sftkit.clean import neardup
from sftkit.clean.dedup_keys import make_keys
from sftkit.io.blocks import InputError, iter_blocks, parse_block
from sftkit.io.records import RecordError, to_record

log = logging.getLogger(__name__)

PARAMS = neardup.MinHashParams()  # prep's and judge's defaults: the same threshold everywhere
QUOTE_CHARS = 200


class TrainFileError(ValueError):
    """A training file that cannot be read at all (exit 2)."""


def user_text(messages: Sequence[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


@dataclass
class TrainSet:
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    bad: int = 0
    files: list[str] = field(default_factory=list)


def read_train(paths: Sequence[str]) -> TrainSet:
    """Every training record's id and user-turn text, from each file in turn."""
    out = TrainSet(files=list(paths))
    for path in paths:
        first_bad = ""
        try:
            for block in iter_blocks(path):
                parsed = parse_block(block)
                for lineno, _ordinal, reason in parsed.bad:
                    out.bad += 1
                    first_bad = first_bad or f"{path}:{lineno}: {reason}"
                for ordinal, obj in parsed.items:
                    try:
                        rec = to_record(obj, source="train", need_answer=False)
                    except RecordError as e:
                        out.bad += 1
                        first_bad = first_bad or f"{path}: record {ordinal} of a block at line {block.first_line}: {e}"
                        continue
                    out.ids.append(rec["id"])
                    out.texts.append(user_text(rec["messages"]))
        except (OSError, InputError) as e:
            raise TrainFileError(f"--train-file {path}: {e}") from None
        if first_bad:
            log.warning("--train-file %s: unreadable records skipped (first: %s)", path, first_bad)
    if not out.ids:
        raise TrainFileError(f"--train-file {', '.join(paths)}: no readable training record ({out.bad} bad)")
    return out


def find(prompts: Sequence[str], train: TrainSet, params: neardup.MinHashParams = PARAMS) -> list[dict[str, Any]]:
    """Per contaminated prompt (by index into `prompts`, the eval prompts' user-turn texts): the most similar
    training record and the Jaccard similarity. LSH candidates over training and eval texts together, each pair of
    one eval and one training text confirmed by exact Jaccard (train-train and eval-eval pairs are not compared)."""
    n_train = len(train.texts)
    keys = make_keys([*train.texts, *prompts])
    h, nfeat = neardup.ngram_features(keys, params.ngram)
    sig = neardup.minhash(h, nfeat, params.num_perm, params.seed)
    bands = neardup.band_hashes(sig, nfeat, params.bands, params.rows)
    pairs = neardup.lsh_pairs(bands)
    cross = pairs[(pairs[:, 0] < n_train) & (pairs[:, 1] >= n_train)]  # i < j: train first, then eval
    sims = neardup.jaccard_of_pairs(cross, neardup.feature_lookup(h, nfeat))
    best: dict[int, tuple[float, int]] = {}
    for (i, j), s in zip(cross.tolist(), sims.tolist(), strict=True):
        if s >= params.threshold and (j not in best or s > best[j][0]):
            best[j] = (s, i)
    out = []
    for j in sorted(best):
        s, i = best[j]
        out.append({"index": j - n_train, "train_id": train.ids[i], "jaccard": round(float(s), 4),
                    "train_prompt": train.texts[i][:QUOTE_CHARS]})
    return out


def check(prompts: Sequence[str], paths: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(contaminated prompts, what was checked) for the eval prompts' user-turn texts."""
    train = read_train(paths)
    found = find(prompts, train)
    return found, {"train_files": train.files, "train_records": len(train.ids), "train_bad_records": train.bad,
                   "method": f"MinHash LSH near-dup of the user turns (character {PARAMS.ngram}-grams, "
                             f"{PARAMS.num_perm} bins, {PARAMS.bands} bands of {PARAMS.rows}), confirmed by exact "
                             f"Jaccard >= {PARAMS.threshold} (prep's and judge's threshold)",
                   "jaccard_threshold": PARAMS.threshold, "found": len(found)}
