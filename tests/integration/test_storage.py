"""scoreops.storage against real S3 servers on loopback: rclone serve s3 and Ceph radosgw.

Every test runs once per server (the ``s3_server`` fixture is parametrised), each in a
fresh bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from scoreops import storage
from scoreops.storage import artifacts as artifacts_mod
from scoreops.storage import s3 as s3_mod
from testkit.s3 import S3Server

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@contextmanager
def calls(operation: str) -> Iterator[list[dict[str, Any]]]:
    """Record the parameters of every ``operation`` (e.g. "UploadPart") the storage layer's
    S3 client sends while the block runs."""
    client = s3_mod.get_client()
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(params)

    event = f"before-parameter-build.s3.{operation}"
    client.meta.events.register(event, record)
    try:
        yield seen
    finally:
        client.meta.events.unregister(event, record)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_checkpoint(directory: Path, seed: int) -> dict[str, bytes]:
    """A small model-like directory; returns {relative path: bytes}."""
    rng = __import__("random").Random(seed)
    files = {
        "model.safetensors": rng.randbytes(300_000),
        "config.json": json.dumps({"hidden_size": 16, "seed": seed}).encode(),
        "tokenizer/vocab.txt": "\n".join(f"tok{i}" for i in range(500)).encode(),
        "optimizer/state-00.bin": rng.randbytes(50_000),
    }
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


# ------------------------------------------------------------------------------ objects


def test_round_trip_bytes_text_json(s3_bucket: str) -> None:
    base = storage.join(s3_bucket, "rt")
    blob = bytes(range(256)) * 41
    storage.write_bytes(storage.join(base, "blob.bin"), blob)
    storage.write_text(storage.join(base, "note.txt"), "héllo, wörld\n")
    obj = {"step": 3, "loss": 0.125, "tags": ["a", "ß"], "nested": {"none": None}}
    storage.write_json(storage.join(base, "state.json"), obj)

    assert storage.read_bytes(f"{base}/blob.bin") == blob
    assert storage.size(f"{base}/blob.bin") == len(blob)
    assert storage.read_text(f"{base}/note.txt") == "héllo, wörld\n"
    assert storage.read_json(f"{base}/state.json") == obj

    storage.write_json(f"{base}/state.json", {"step": 4})
    assert storage.read_json(f"{base}/state.json") == {"step": 4}

    assert storage.exists(f"{base}/blob.bin")
    assert storage.exists(base)  # a non-empty prefix
    assert not storage.exists(f"{base}/nope.bin")
    assert not storage.exists(f"{base}/blob")  # a key prefix is not a directory prefix
    assert storage.exists(s3_bucket)
    assert storage.is_remote(base)

    storage.delete(f"{base}/blob.bin")
    storage.delete(f"{base}/blob.bin")  # deleting twice is fine
    assert not storage.exists(f"{base}/blob.bin")
    with pytest.raises(storage.NotFoundError, match=r"rt/blob\.bin does not exist"):
        storage.read_bytes(f"{base}/blob.bin")


def test_multipart_above_threshold_round_trips(
    s3_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    data = os.urandom(20 * MiB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    uri = storage.join(s3_bucket, "big/upload.bin")

    with calls("UploadPart") as parts, calls("PutObject") as puts:
        storage.upload_file(src, uri)
    # 20 MiB in 8 MiB parts
    assert sorted(p["PartNumber"] for p in parts) == [1, 2, 3]
    assert puts == []
    head = s3_server.client().head_object(Bucket=s3_bucket[5:], Key="big/upload.bin")
    assert head["ContentLength"] == len(data)
    if s3_server.kind == "ceph":  # radosgw reports multipart ETags as "<md5>-<parts>"
        assert head["ETag"].strip('"').endswith("-3")

    dst = tmp_path / "out" / "big.bin"
    storage.download_file(uri, dst)
    assert sha256(dst.read_bytes()) == sha256(data)
    assert sha256(storage.read_bytes(uri)) == sha256(data)

    # write_bytes takes the same path for big payloads, and a single PUT for small ones
    with calls("UploadPart") as parts, calls("PutObject") as puts:
        storage.write_bytes(storage.join(s3_bucket, "big/written.bin"), data[: 9 * MiB])
        storage.write_bytes(storage.join(s3_bucket, "big/small.bin"), data[:1000])
    assert len(parts) == 2
    assert [p["Key"] for p in puts] == ["big/small.bin"]
    assert storage.read_bytes(storage.join(s3_bucket, "big/written.bin")) == data[: 9 * MiB]


def test_listing_nested_keys_and_sibling_prefixes(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [
        "runs/run1/a.txt",
        "runs/run1/sub/b.txt",
        "runs/run1/sub/deep/c.txt",
        "runs/run10/x.txt",
        "runs/run1.txt",
        "other/y.txt",
    ]
    for key in keys:
        storage.write_text(f"{s3_bucket}/{key}", key)
    b = s3_bucket

    run1 = [f"{b}/runs/run1/a.txt", f"{b}/runs/run1/sub/b.txt", f"{b}/runs/run1/sub/deep/c.txt"]
    assert storage.list_uris(f"{b}/runs/run1") == run1
    assert storage.list_uris(f"{b}/runs/run1/") == run1
    assert storage.list_uris(f"{b}/runs/run1", recursive=False) == [
        f"{b}/runs/run1/a.txt",
        f"{b}/runs/run1/sub/",
    ]
    assert storage.list_uris(f"{b}/runs", recursive=False) == [
        f"{b}/runs/run1.txt",
        f"{b}/runs/run1/",
        f"{b}/runs/run10/",
    ]
    assert storage.list_uris(b) == sorted(f"{b}/{k}" for k in keys)
    assert storage.list_uris(f"{b}/runs/run2") == []
    assert dict(storage.list_entries(f"{b}/runs/run1"))["sub/deep/c.txt"] == len(
        "runs/run1/sub/deep/c.txt"
    )

    # small pages: the listing follows continuation tokens
    monkeypatch.setattr(s3_mod, "_LIST_PAGE_SIZE", 2)
    with calls("ListObjectsV2") as pages:
        assert storage.list_uris(b) == sorted(f"{b}/{k}" for k in keys)
    assert len(pages) == 3
    assert pages[1]["ContinuationToken"]

    storage.delete_prefix(f"{b}/runs/run1")
    assert storage.list_uris(b) == [
        f"{b}/other/y.txt",
        f"{b}/runs/run1.txt",
        f"{b}/runs/run10/x.txt",
    ]


# ------------------------------------------------------------------------------ artifacts


def test_artifact_round_trip_and_listing(s3_bucket: str, tmp_path: Path) -> None:
    files = make_checkpoint(tmp_path / "ckpt", seed=1)
    ckpts = storage.join(s3_bucket, "run/checkpoints")
    uri = storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-100", {"step": 100})
    assert uri == f"{ckpts}/step-100"
    storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-50/", {"step": 50})

    assert storage.is_complete(uri)
    assert storage.list_artifacts(ckpts) == [f"{ckpts}/step-50", f"{ckpts}/step-100"]

    manifest = storage.load_artifact(uri, tmp_path / "loaded")
    assert manifest["metadata"] == {"step": 100}
    assert sorted(f["path"] for f in manifest["files"]) == sorted(files)
    for name, data in files.items():
        assert (tmp_path / "loaded" / name).read_bytes() == data
    entry = next(f for f in manifest["files"] if f["path"] == "model.safetensors")
    assert entry == {
        "path": "model.safetensors",
        "size": len(files["model.safetensors"]),
        "sha256": sha256(files["model.safetensors"]),
    }
    # the local copy is itself a complete artifact
    assert storage.is_complete(tmp_path / "loaded")


def test_interrupted_artifact_is_not_listed_or_loaded(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_checkpoint(tmp_path / "ckpt", seed=2)
    ckpts = storage.join(s3_bucket, "checkpoints")
    storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-1")

    def crash(uri: str, data: bytes) -> None:
        raise ConnectionError("worker lost its node")

    write_manifest = artifacts_mod._write_manifest
    monkeypatch.setattr(artifacts_mod, "_write_manifest", crash)
    with pytest.raises(ConnectionError):
        storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-2")
    # the files went up, the manifest did not
    uploaded = storage.list_uris(f"{ckpts}/step-2")
    assert f"{ckpts}/step-2/model.safetensors" in uploaded
    assert f"{ckpts}/step-2/MANIFEST.json" not in uploaded

    assert not storage.is_complete(f"{ckpts}/step-2")
    assert storage.list_artifacts(ckpts) == [f"{ckpts}/step-1"]
    with pytest.raises(storage.IncompleteArtifactError, match=r"step-2.*MANIFEST\.json is missing"):
        storage.load_artifact(f"{ckpts}/step-2", tmp_path / "out")
    with pytest.raises(storage.IncompleteArtifactError):
        storage.cached_artifact(f"{ckpts}/step-2")

    # replacing a complete artifact removes its manifest first: a crash mid-replace leaves
    # it incomplete, never half old and half new
    make_checkpoint(tmp_path / "ckpt", seed=3)
    with pytest.raises(ConnectionError):
        storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-1")
    assert storage.list_artifacts(ckpts) == []

    monkeypatch.setattr(artifacts_mod, "_write_manifest", write_manifest)
    storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-2")
    assert storage.list_artifacts(ckpts) == [f"{ckpts}/step-2"]


def test_corrupted_artifact_file_is_detected(s3_bucket: str, tmp_path: Path) -> None:
    files = make_checkpoint(tmp_path / "ckpt", seed=4)
    uri = storage.save_artifact(tmp_path / "ckpt", storage.join(s3_bucket, "model"))
    weights = storage.join(uri, "model.safetensors")

    # same size, one byte flipped: only the hash can tell
    flipped = bytearray(files["model.safetensors"])
    flipped[1234] ^= 0xFF
    storage.write_bytes(weights, bytes(flipped))
    assert storage.is_complete(uri)
    with pytest.raises(storage.IncompleteArtifactError, match=r"model\.safetensors is corrupted"):
        storage.load_artifact(uri, tmp_path / "a")
    assert storage.load_artifact(uri, tmp_path / "b", verify=False)["files"]

    # truncated: sizes no longer match
    storage.write_bytes(weights, files["model.safetensors"][:1000])
    assert not storage.is_complete(uri)
    assert storage.list_artifacts(s3_bucket) == []
    with pytest.raises(storage.IncompleteArtifactError, match=r"has 1000 bytes"):
        storage.load_artifact(uri, tmp_path / "c", verify=False)

    storage.write_bytes(weights, files["model.safetensors"])
    storage.delete(storage.join(uri, "tokenizer/vocab.txt"))
    assert not storage.is_complete(uri)
    with pytest.raises(storage.IncompleteArtifactError, match=r"tokenizer/vocab\.txt .*missing"):
        storage.load_artifact(uri, tmp_path / "d")


def test_cached_artifact_downloads_once(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCOREOPS_ARTIFACT_CACHE", str(tmp_path / "cache"))
    files = make_checkpoint(tmp_path / "ckpt", seed=5)
    uri = storage.save_artifact(tmp_path / "ckpt", storage.join(s3_bucket, "models/m"))

    with calls("GetObject") as gets:
        first = storage.cached_artifact(uri)
    assert first.parent == tmp_path / "cache"
    assert (first / "config.json").read_bytes() == files["config.json"]
    assert len(gets) == 1 + len(files)  # the manifest, then each file

    with calls("GetObject") as gets:
        assert storage.cached_artifact(uri) == first
    assert [g["Key"] for g in gets] == ["models/m/MANIFEST.json"]

    # a replaced artifact gets a fresh cache entry
    files2 = make_checkpoint(tmp_path / "ckpt", seed=6)
    storage.save_artifact(tmp_path / "ckpt", uri)
    second = storage.cached_artifact(uri)
    assert second != first
    assert (second / "model.safetensors").read_bytes() == files2["model.safetensors"]

    # the superseded entry goes first when the cache is over its bound; a recent one stays
    assert storage.evict_artifact_cache(max_bytes=0) == []  # both used minutes ago at most
    later = time.time() + 3600
    assert storage.evict_artifact_cache(max_bytes=0, keep=(second,), now=later) == [first]
    assert not first.exists() and storage.cached_artifact(uri) == second


# ------------------------------------------------------------------------------ errors


def test_missing_bucket_is_named_with_the_endpoint(s3_env: S3Server, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "f.txt").write_text("x")
    uri = "s3://no-such-bucket-here/some/key.txt"
    expected = rf"bucket 'no-such-bucket-here' does not exist at endpoint {s3_env.endpoint}"
    operations = {
        "read": lambda: storage.read_bytes(uri),
        "write": lambda: storage.write_text(uri, "x"),
        "exists": lambda: storage.exists(uri),
        "list": lambda: storage.list_uris("s3://no-such-bucket-here/some"),
        "upload": lambda: storage.upload_file(tmp_path / "f.txt", uri),
        "download": lambda: storage.download_file(uri, tmp_path / "g.txt"),
        "save_artifact": lambda: storage.save_artifact(tmp_path / "art", uri),
        "load_artifact": lambda: storage.load_artifact(uri, tmp_path / "out"),
        "list_artifacts": lambda: storage.list_artifacts("s3://no-such-bucket-here/x"),
    }
    for name, op in operations.items():
        with pytest.raises(storage.StorageError, match=expected) as info:
            op()
        assert not isinstance(info.value, storage.NotFoundError), name


def test_wrong_credentials_name_the_key_not_the_secret(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = storage.join(s3_bucket, "secret.txt")
    storage.write_text(uri, "hello")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * MiB))
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    key_id = os.environ["AWS_ACCESS_KEY_ID"]

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-not-the-secret")
    storage.clear_client_cache()
    operations = {
        "read": lambda: storage.read_bytes(uri),
        "exists (HEAD)": lambda: storage.exists(uri),
        "write": lambda: storage.write_text(uri, "x"),
        "list": lambda: storage.list_uris(s3_bucket),
        "multipart upload": lambda: storage.upload_file(big, storage.join(s3_bucket, "b")),
    }
    for name, op in operations.items():
        with pytest.raises(storage.StorageError) as info:
            op()
        message = str(info.value)
        assert f"access key id '{key_id}'" in message, name
        assert endpoint in message, name
        assert "AWS_SECRET_ACCESS_KEY" in message, name
        assert "definitely-not-the-secret" not in message, name

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody-knows-me")
    with pytest.raises(storage.StorageError, match=r"access key id 'nobody-knows-me' is not known"):
        storage.read_bytes(uri)
