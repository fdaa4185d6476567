"""Benchmark items from files the user points at: a file or a folder, local or remote.

Understood layouts:

* Hugging Face Hub snapshots: ``<config>/<split>-00000-of-00001.parquet`` (or ``.jsonl``);
* ``datasets.save_to_disk`` folders: ``<split>/data-00000-of-00001.arrow``;
* plain JSONL/JSON files (``test.jsonl``; also the layout scoreops itself writes);
* BIG-Bench Hard: ``<task>.json`` files holding ``{"examples": [{"input", "target"}]}``, with
  optional ``cot-prompts/<task>.txt`` chain-of-thought prompts;
* the original MATH release: one ``{"problem", "solution", "level", "type"}`` JSON per file.

A file belongs to the test split when its path names one of the benchmark's test splits
(``test``; ``validation`` for HellaSwag), to the few-shot pool when it names a few-shot split
(``train``, ``dev``); when no file names a test split, every data file is test data.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scoreops.benchmarks.base import Benchmark, SourceResult
from scoreops.benchmarks.bbh import parse_cot_prompt
from scoreops.data.uri import is_local, read_bytes

__all__ = ["read_source"]

log = logging.getLogger(__name__)

_DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".arrow", ".txt")


def _list(source: str) -> list[tuple[str, str]]:
    """(uri, path relative to the source) of every candidate file under ``source``."""
    if is_local(source):
        root = Path(source.removeprefix("file://")).expanduser()
        if root.is_file():
            return [(str(root), root.name)]
        if not root.is_dir():
            raise FileNotFoundError(f"--source {source}: no such file or folder")
        return [(str(p), str(p.relative_to(root))) for p in sorted(root.rglob("*"))
                if p.is_file() and p.name.endswith(_DATA_SUFFIXES)]
    from scoreops import storage

    if source.rstrip("/").endswith(_DATA_SUFFIXES) and storage.exists(source):
        return [(source, source.rstrip("/").rsplit("/", 1)[-1])]
    prefix = source if source.endswith("/") else source + "/"
    uris = [u for u in storage.list_uris(prefix) if u.endswith(_DATA_SUFFIXES)]
    if not uris:
        raise FileNotFoundError(f"--source {source}: no data files there")
    return [(u, u[len(prefix):]) for u in sorted(uris)]


def _parts(rel: str) -> list[str]:
    """Lower-case words of a relative path: ``main/test-00000-of-00001.parquet`` ->
    ``main``, ``test``, ``00000``, ..."""
    return [w for w in re.split(r"[/\\._-]+", rel.lower()) if w]


def _split_of(rel: str, bench: Benchmark) -> str | None:
    words = _parts(rel)
    if any(s in words for s in bench.test_splits):
        return "test"
    if any(s in words for s in bench.fewshot_splits):
        return "fewshot"
    return None


def _rows(uri: str, rel: str) -> Iterator[dict[str, Any]]:
    name = rel.lower()
    if name.endswith(".arrow"):
        import pyarrow as pa

        with pa.BufferReader(read_bytes(uri)) as buf:
            try:
                table = pa.ipc.open_stream(buf).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(pa.BufferReader(read_bytes(uri))).read_all()
        yield from table.to_pylist()
        return
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from pq.read_table(io.BytesIO(read_bytes(uri))).to_pylist()
        return
    data = read_bytes(uri)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    text = data.decode("utf-8")
    stripped = text.lstrip()
    if name.endswith((".json", ".json.gz")) and stripped.startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None  # JSON lines under a .json name
        if isinstance(doc, dict) and isinstance(doc.get("examples"), list):
            yield from doc["examples"]  # BIG-Bench task file
            return
        if isinstance(doc, list):
            yield from doc
            return
        if isinstance(doc, dict):
            yield doc  # one item per file (original MATH release)
            return
    for line in text.split("\n"):
        if line.strip():
            yield json.loads(line)


def _hint(rel: str) -> str:
    """A subject/task hint from the path: the file stem, or its folder for split files."""
    p = Path(rel)
    stem = p.name.split(".", 1)[0]
    if re.match(r"^(test|train|dev|validation|val|data)\b", stem) and len(p.parts) > 1:
        return p.parts[-2]
    if len(p.parts) > 2 and p.parts[0].lower() in ("test", "train"):  # MATH: test/<subject>/1.json
        return p.parts[-2]
    return stem


def read_source(source: str, bench: Benchmark) -> SourceResult:
    """Test and few-shot items of ``bench`` from the files at ``source``."""
    if bench.from_raw is None:
        raise ValueError(f"{bench.name} cannot be imported from files")
    files = _list(source)
    if not files:
        raise FileNotFoundError(f"--source {source}: no data files there")
    cot = [(u, r) for u, r in files if r.lower().endswith(".txt")]
    data_files = [(u, r) for u, r in files if not r.lower().endswith(".txt")
                  and Path(r).name.lower() not in ("meta.json", "state.json", "dataset_info.json",
                                                   "dataset_dict.json")]
    splits = {rel: _split_of(rel, bench) for _, rel in data_files}
    if len(data_files) > 1 and not any(s == "test" for s in splits.values()):
        splits = {rel: "test" if s is None else s for rel, s in splits.items()}
    if len(data_files) == 1:
        splits = {rel: "test" for rel in splits}
    test: list[dict[str, Any]] = []
    fewshot: list[dict[str, Any]] = []
    skipped = 0
    for uri, rel in data_files:
        split = splits[rel]
        if split is None:
            continue
        out = test if split == "test" else fewshot
        hint = _hint(rel)
        for row in _rows(uri, rel):
            try:
                item = bench.from_raw(row, hint)
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                skipped += 1
                if skipped <= 5:
                    log.warning("%s: skipped a row of %s: %s", bench.name, rel, exc)
                continue
            out.append(item)
    for uri, rel in cot:
        if "cot" in rel.lower():
            task = Path(rel).name.split(".", 1)[0]
            fewshot.extend(parse_cot_prompt(read_bytes(uri).decode("utf-8"), task))
    for prefix, items in ((bench.name, test), (f"{bench.name}-fewshot", fewshot)):
        for i, item in enumerate(items):
            item.setdefault("id", f"{prefix}-{i}")
    where = f"files at {source}" + (f" ({skipped} unusable rows skipped)" if skipped else "")
    return test, fewshot, where
