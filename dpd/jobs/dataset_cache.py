"""Which dataset caches a job's trainer writes. Pure.

diffusion-pipe writes its latent and text-embedding caches inside each dataset directory, at
``<dir>/cache/<cache name>/`` (reference §3.3). Two trainers that build the same cache at the
same time write the same sqlite and shard files, and one of them, or both, fail or train on a
torn cache. A job's keys name those folders, so the scheduler can keep two jobs from building
one of them at once (scheduler rule 6).

A key is the folder's path, normalised without touching the file system; two spellings of one
folder through a symbolic link are not recognised as one. Model types whose cache name the
trainer picks at run time (Wan's variants) are keyed by their type, which can only make two
jobs wait for each other that need not: never the reverse.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dpd.jobs import model_rules as mr


def cache_keys(model_type: str, dataset: Mapping[str, Any]) -> frozenset[str]:
    """The cache folders a job's training directories get, from its model type and its
    normalised ``dataset`` (``JobSpec.dataset``). Eval datasets, given as separate dataset
    files, are not read here."""
    rules = mr.MODEL_RULES.get(model_type)
    folder = rules.cache_folder if rules is not None else model_type
    keys = set()
    for entry in dataset.get("directories", []):
        path = entry.get("path") if isinstance(entry, Mapping) else None
        if isinstance(path, str) and path:
            keys.add(os.path.join(os.path.normpath(path), "cache", folder))
    return frozenset(keys)


def spec_cache_keys(spec: Mapping[str, Any] | None) -> frozenset[str]:
    """``cache_keys`` of a job document as job.json and the fleet's records hold it."""
    if not spec or not isinstance(spec.get("dataset"), Mapping):
        return frozenset()
    return cache_keys(str(spec.get("model_type", "")), spec["dataset"])
