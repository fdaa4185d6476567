"""scoreops.storage on local paths, file:// URIs and the embedded store://, plus URI and S3
configuration handling that needs no server."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import time
from pathlib import Path

import pytest

from scoreops import storage
from scoreops.storage import artifacts as artifacts_mod
from scoreops.storage import local as local_mod


@pytest.fixture(params=["path", "file", "store"])
def base(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A directory-like URI in each local flavour, empty."""
    monkeypatch.setenv("SCOREOPS_STORE", str(tmp_path / "store"))
    if request.param == "path":
        return str(tmp_path / "data")
    if request.param == "file":
        return f"file://{tmp_path}/data"
    return "store://data"


def make_checkpoint(directory: Path, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {
        "model.safetensors": rng.randbytes(20_000),
        "config.json": json.dumps({"seed": seed}).encode(),
        "tokenizer/vocab.txt": "\n".join(f"tok{i}" for i in range(100)).encode(),
    }
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return files


# ------------------------------------------------------------------------------ URIs


def test_parse_and_join(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREOPS_STORE", str(tmp_path / "st"))
    assert storage.parse("s3://bucket/a/b.txt") == storage.uri.S3Location("bucket", "a/b.txt")
    assert storage.parse("s3://bucket") == storage.uri.S3Location("bucket", "")
    assert storage.local_path("file:///x/y") == Path("/x/y")
    assert storage.local_path("file://localhost/x/y") == Path("/x/y")
    assert storage.local_path("store://runs/a") == tmp_path / "st" / "runs" / "a"
    assert storage.local_path("store://") == tmp_path / "st"
    assert storage.store_root() == tmp_path / "st"

    assert storage.join("s3://bkt/runs/", "x", "/ckpt/") == "s3://bkt/runs/x/ckpt"
    assert storage.join("s3://bkt", "k") == "s3://bkt/k"
    assert storage.join("store://", "a", "b") == "store://a/b"
    assert storage.join("file:///", "a") == "file:///a"
    assert storage.join("/", "a") == "/a"
    assert storage.join("rel/dir", "a/b") == "rel/dir/a/b"
    assert storage.join("s3://bkt/x", "", "y") == "s3://bkt/x/y"

    assert storage.is_remote("s3://bkt/k")
    assert not storage.is_remote("/tmp/x")
    assert not storage.is_remote("file:///tmp/x")
    assert not storage.is_remote("store://x")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://bucket/key", r"unsupported URI scheme 'gs'.*s3://bucket/key"),
        ("s3:///key", r"has no bucket"),
        ("s3://Bad_Bucket/key", r"'Bad_Bucket' is not a valid bucket name"),
        ("file://relative/path", r"absolute path"),
        ("store://../escape", r"'\.\.' is not allowed"),
        ("", r"empty storage URI"),
    ],
)
def test_bad_uris_are_rejected(uri: str, message: str) -> None:
    with pytest.raises(storage.StorageError, match=message):
        storage.read_bytes(uri)


# ------------------------------------------------------------------------------ objects


def test_round_trip_bytes_text_json(base: str) -> None:
    blob = bytes(range(256)) * 7
    storage.write_bytes(storage.join(base, "a/blob.bin"), blob)
    storage.write_text(storage.join(base, "note.txt"), "héllo\n")
    obj = {"step": 1, "tags": ["ß"], "x": None}
    storage.write_json(storage.join(base, "s.json"), obj)

    assert storage.read_bytes(f"{base}/a/blob.bin") == blob
    assert storage.size(f"{base}/a/blob.bin") == len(blob)
    assert storage.read_text(f"{base}/note.txt") == "héllo\n"
    assert storage.read_json(f"{base}/s.json") == obj
    storage.write_json(f"{base}/s.json", [1, 2])
    assert storage.read_json(f"{base}/s.json") == [1, 2]

    assert storage.exists(f"{base}/a/blob.bin")
    assert storage.exists(f"{base}/a")
    assert not storage.exists(f"{base}/a/nope")
    assert not storage.exists(f"{base}/a/blob")

    storage.delete(f"{base}/a/blob.bin")
    storage.delete(f"{base}/a/blob.bin")
    assert not storage.exists(f"{base}/a/blob.bin")
    with pytest.raises(storage.NotFoundError, match=r"blob\.bin does not exist") as info:
        storage.read_bytes(f"{base}/a/blob.bin")
    assert isinstance(info.value, FileNotFoundError)

    storage.write_text(f"{base}/bad.json", "{not json")
    with pytest.raises(storage.StorageError, match=r"bad\.json is not valid JSON"):
        storage.read_json(f"{base}/bad.json")


def test_upload_and_download_copy_files(base: str, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    storage.upload_file(src, storage.join(base, "x/y.bin"))
    storage.download_file(storage.join(base, "x/y.bin"), tmp_path / "out" / "z.bin")
    assert (tmp_path / "out" / "z.bin").read_bytes() == src.read_bytes()
    with pytest.raises(storage.NotFoundError):
        storage.download_file(storage.join(base, "missing"), tmp_path / "m.bin")


def test_write_is_atomic(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = storage.join(base, "state.json")
    storage.write_json(uri, {"step": 1})

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(storage.StorageError, match=r"cannot write .*state\.json: No space left"):
        storage.write_json(uri, {"step": 2})
    monkeypatch.setattr(os, "fsync", fsync)
    assert storage.read_json(uri) == {"step": 1}
    # no temporary file is left behind, and none would be listed
    directory = storage.local_path(base)
    assert sorted(p.name for p in directory.iterdir()) == ["state.json"]
    (directory / f"{local_mod.TMP_PREFIX}x.json.0123").write_text("partial")
    assert storage.list_uris(base) == [uri]


def test_listing_nested_keys_and_sibling_prefixes(base: str) -> None:
    keys = [
        "runs/run1/a.txt",
        "runs/run1/sub/b.txt",
        "runs/run1/sub/deep/c.txt",
        "runs/run10/x.txt",
        "runs/run1.txt",
        "other/y.txt",
    ]
    for key in keys:
        storage.write_text(storage.join(base, key), key)
    (storage.local_path(base) / "runs" / "empty-dir").mkdir()
    b = base

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
    assert storage.list_uris(f"{b}/runs/run1.txt") == []  # a file is not a prefix

    storage.delete_prefix(f"{b}/runs/run1")
    assert storage.list_uris(b) == [
        f"{b}/other/y.txt",
        f"{b}/runs/run1.txt",
        f"{b}/runs/run10/x.txt",
    ]
    storage.delete_prefix(f"{b}/runs/run1")  # nothing left: fine


def test_delete_prefix_refuses_the_root() -> None:
    with pytest.raises(storage.StorageError, match="refusing to delete"):
        storage.delete_prefix("/")


# ------------------------------------------------------------------------------ artifacts


def test_artifact_round_trip(base: str, tmp_path: Path) -> None:
    files = make_checkpoint(tmp_path / "ckpt", seed=1)
    ckpts = storage.join(base, "ckpts")
    uri = storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-100/", {"step": 100})
    assert uri == f"{ckpts}/step-100"
    for step in (50, 9, 1000):
        storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-{step}", {"step": step})
    storage.write_text(f"{ckpts}/notes.txt", "not an artifact")

    assert storage.list_artifacts(ckpts) == [
        f"{ckpts}/step-9",
        f"{ckpts}/step-50",
        f"{ckpts}/step-100",
        f"{ckpts}/step-1000",
    ]
    manifest = storage.load_artifact(uri, tmp_path / "loaded")
    assert manifest["format"] == "scoreops.artifact/v1"
    assert manifest["metadata"] == {"step": 100}
    assert manifest["total_size"] == sum(len(d) for d in files.values())
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        name: hashlib.sha256(data).hexdigest() for name, data in files.items()
    }
    for name, data in files.items():
        assert (tmp_path / "loaded" / name).read_bytes() == data
    assert json.loads((tmp_path / "loaded" / "MANIFEST.json").read_text()) == manifest
    assert storage.read_manifest(uri) == manifest

    # local artifacts are used in place
    assert storage.cached_artifact(uri) == storage.local_path(uri)


def test_save_in_place_writes_only_the_manifest(tmp_path: Path) -> None:
    files = make_checkpoint(tmp_path / "ckpt", seed=2)
    storage.save_artifact(tmp_path / "ckpt", tmp_path / "ckpt", {"in_place": True})
    assert storage.is_complete(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(
        ["MANIFEST.json", "config.json", "model.safetensors", "tokenizer"]
    )
    # saving again does not list the old manifest as a file of the artifact
    manifest = storage.read_manifest(
        storage.save_artifact(tmp_path / "ckpt", f"file://{tmp_path}/copy")
    )
    assert sorted(f["path"] for f in manifest["files"]) == sorted(files)


def test_interrupted_artifact_is_not_listed_or_loaded(
    base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_checkpoint(tmp_path / "ckpt", seed=3)
    ckpts = storage.join(base, "ckpts")
    storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-1")

    def crash(uri: str, data: bytes) -> None:
        raise KeyboardInterrupt

    write_manifest = artifacts_mod._write_manifest
    monkeypatch.setattr(artifacts_mod, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-2")
    assert f"{ckpts}/step-2/model.safetensors" in storage.list_uris(f"{ckpts}/step-2")
    assert not storage.is_complete(f"{ckpts}/step-2")
    assert storage.list_artifacts(ckpts) == [f"{ckpts}/step-1"]
    with pytest.raises(storage.IncompleteArtifactError, match=r"MANIFEST\.json is missing"):
        storage.load_artifact(f"{ckpts}/step-2", tmp_path / "out")
    with pytest.raises(storage.IncompleteArtifactError, match=r"MANIFEST\.json is missing"):
        storage.cached_artifact(f"{ckpts}/step-2")

    with pytest.raises(KeyboardInterrupt):
        storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-1")  # replacing
    assert storage.list_artifacts(ckpts) == []

    monkeypatch.setattr(artifacts_mod, "_write_manifest", write_manifest)
    storage.save_artifact(tmp_path / "ckpt", f"{ckpts}/step-2")
    assert storage.list_artifacts(ckpts) == [f"{ckpts}/step-2"]


def test_corrupted_artifact_is_detected(base: str, tmp_path: Path) -> None:
    files = make_checkpoint(tmp_path / "ckpt", seed=4)
    uri = storage.save_artifact(tmp_path / "ckpt", storage.join(base, "model"))
    weights = storage.join(uri, "model.safetensors")

    flipped = bytearray(files["model.safetensors"])
    flipped[100] ^= 1
    storage.write_bytes(weights, bytes(flipped))
    assert storage.is_complete(uri)  # sizes match; only hashing can tell
    with pytest.raises(storage.IncompleteArtifactError, match=r"model\.safetensors is corrupted"):
        storage.load_artifact(uri, tmp_path / "a")
    storage.load_artifact(uri, tmp_path / "b", verify=False)
    # verifying in place works too
    with pytest.raises(storage.IncompleteArtifactError, match=r"corrupted"):
        storage.load_artifact(uri, storage.local_path(uri))

    storage.write_bytes(weights, b"short")
    assert not storage.is_complete(uri)
    with pytest.raises(
        storage.IncompleteArtifactError, match=r"has 5 bytes, the manifest says 20000"
    ):
        storage.cached_artifact(uri)

    storage.write_bytes(weights, files["model.safetensors"])
    storage.delete(storage.join(uri, "config.json"))
    with pytest.raises(storage.IncompleteArtifactError, match=r"config\.json is listed .* missing"):
        storage.load_artifact(uri, tmp_path / "c")


def test_bad_manifest_and_bad_input(base: str, tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "ckpt", seed=5)
    uri = storage.save_artifact(tmp_path / "ckpt", storage.join(base, "m"))
    manifest = storage.read_manifest(uri)
    manifest["files"][0]["path"] = "../../etc/passwd"
    storage.write_json(storage.join(uri, "MANIFEST.json"), manifest)
    with pytest.raises(storage.IncompleteArtifactError, match=r"must be relative"):
        storage.load_artifact(uri, tmp_path / "x")
    assert not storage.is_complete(uri)
    storage.write_text(storage.join(uri, "MANIFEST.json"), "{")
    with pytest.raises(storage.IncompleteArtifactError, match=r"not valid JSON"):
        storage.read_manifest(uri)

    with pytest.raises(storage.StorageError, match=r"not a directory"):
        storage.save_artifact(tmp_path / "nope", storage.join(base, "n"))
    with pytest.raises(storage.StorageError, match=r"not JSON-serialisable"):
        storage.save_artifact(tmp_path / "ckpt", storage.join(base, "n"), {"x": object()})
    assert not storage.exists(storage.join(base, "n"))


# ------------------------------------------------------------------------------ S3 config


@pytest.fixture
def bare_aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS configuration at all: no variables, no ~/.aws, no instance metadata."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "S3_", "SCOREOPS_S3_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "home" / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "home" / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage.clear_client_cache()


@pytest.mark.usefixtures("bare_aws_env")
def test_unconfigured_s3_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(storage.StorageError, match=r"not configured") as info:
        storage.read_bytes("s3://bucket/key")
    for var in (
        "AWS_ENDPOINT_URL",
        "S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert var in str(info.value)

    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(storage.StorageError, match=r"no S3 credentials for endpoint http://127"):
        storage.exists("s3://bucket/key")

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    with pytest.raises(storage.StorageError, match=r"AWS_SECRET_ACCESS_KEY is not set"):
        storage.write_bytes("s3://bucket/key", b"")

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(storage.StorageError, match=r"AWS_PROFILE='no-such-profile' names no"):
        storage.list_uris("s3://bucket/key")


@pytest.mark.usefixtures("bare_aws_env")
def test_unreachable_endpoint_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"127.0.0.1:{port}")
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("SCOREOPS_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("SCOREOPS_S3_CONNECT_RETRIES", "1")
    monkeypatch.setattr(storage.s3, "_BACKOFF_BASE_S", 0.01)
    with pytest.raises(storage.StorageError) as info:
        storage.read_bytes("s3://bucket/key")
    message = str(info.value)
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in message
    assert "s3://bucket/key" in message
    assert "AWS_ENDPOINT_URL" in message


def _cache_entry(cache: Path, name: str, size: int, age: float) -> Path:
    entry = cache / name
    entry.mkdir(parents=True)
    (entry / "model.bin").write_bytes(b"x" * size)
    (entry / storage.MANIFEST_NAME).write_text(json.dumps({"total_size": size}))
    stamp = time.time() - age
    os.utime(entry, (stamp, stamp))
    return entry


def test_artifact_cache_evicts_least_recently_used_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCOREOPS_ARTIFACT_CACHE", str(cache))
    oldest = _cache_entry(cache, "a" * 32, 400, age=7200)
    middle = _cache_entry(cache, "b" * 32, 300, age=3600)
    kept = _cache_entry(cache, "c" * 32, 300, age=5000)
    recent = _cache_entry(cache, "d" * 32, 500, age=60)  # in use minutes ago
    (cache / f"{local_mod.TMP_PREFIX}download").mkdir()  # a download in flight

    # 1500 bytes, bound 700: the oldest goes, then the next oldest not kept; "recent" stays
    removed = storage.evict_artifact_cache(max_bytes=700, keep=(kept,))
    assert removed == [oldest, middle]
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        [kept.name, recent.name])
    assert (cache / f"{local_mod.TMP_PREFIX}download").is_dir()
    assert storage.evict_artifact_cache(max_bytes=10_000) == []

    monkeypatch.setenv("SCOREOPS_ARTIFACT_CACHE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="SCOREOPS_ARTIFACT_CACHE_MAX_BYTES"):
        storage.evict_artifact_cache()
    monkeypatch.setenv("SCOREOPS_ARTIFACT_CACHE_MAX_BYTES", "0")
    assert storage.evict_artifact_cache(keep=(kept,)) == []  # only recent and kept remain
