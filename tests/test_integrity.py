"""The store's checksums and fingerprint (pico_jax.data.integrity, .filesystem)."""

import json
import os

import numpy as np
import pytest

from pico_jax.data import filesystem, integrity


def _store(tmp_path):
  root = tmp_path / "store"
  (root / "train").mkdir(parents=True)
  np.save(root / "train" / "click.npy", np.array([0, 1, 1], np.float32))
  (root / "vocab").mkdir()
  np.save(root / "vocab" / "000.npy", np.array([b"a", b"b"]))
  meta = integrity.seal({"schema": {"sparse": ["a"]}, "splits": {"train": {"rows": 3}}},
                        str(root), ["train/click.npy", "vocab/000.npy"])
  return root, meta


def test_seal_records_every_file_and_a_fingerprint(tmp_path):
  root, meta = _store(tmp_path)
  assert sorted(meta["files"]) == ["train/click.npy", "vocab/000.npy"]
  entry = meta["files"]["train/click.npy"]
  assert entry["bytes"] == os.path.getsize(root / "train" / "click.npy")
  assert len(entry["blake3"]) == 64
  integrity.check_meta(meta, "meta.json")
  for rel, entry in meta["files"].items():
    integrity.verify_file(str(root), rel, entry)


def test_fingerprint_is_canonical_and_covers_meta():
  a = {"x": 1, "y": [1, 2], "files": {}}
  assert integrity.fingerprint(a) == integrity.fingerprint(json.loads(json.dumps(a)[::1]))
  assert integrity.fingerprint({"y": [1, 2], "x": 1, "files": {}}) == integrity.fingerprint(a)
  assert integrity.fingerprint(dict(a, x=2)) != integrity.fingerprint(a)
  assert integrity.fingerprint(dict(a, fingerprint="z")) == integrity.fingerprint(a)


def test_an_edited_meta_is_caught(tmp_path):
  _, meta = _store(tmp_path)
  edited = json.loads(json.dumps(meta))
  edited["splits"]["train"]["rows"] = 2
  with pytest.raises(integrity.IntegrityError, match="meta.json was changed"):
    integrity.check_meta(edited, "DIR/meta.json")
  stripped = {k: v for k, v in meta.items() if k != "files"}
  with pytest.raises(integrity.IntegrityError, match="no checksums"):
    integrity.check_meta(stripped, "DIR/meta.json")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_file_is_named(tmp_path, damage):
  root, meta = _store(tmp_path)
  path = root / "train" / "click.npy"
  data = bytearray(path.read_bytes())
  if damage == "flip":
    data[-1] ^= 1
    path.write_bytes(bytes(data))
  elif damage == "truncate":
    path.write_bytes(bytes(data[:-4]))
  else:
    path.unlink()
  with pytest.raises(integrity.IntegrityError) as e:
    integrity.verify_file(str(root), "train/click.npy", meta["files"]["train/click.npy"])
  assert str(path) in str(e.value)


def test_uri_locations(tmp_path):
  (tmp_path / "f.bin").write_bytes(b"hello")
  uri = f"file://{tmp_path}"
  assert filesystem.join(uri, "f.bin") == f"file://{tmp_path}/f.bin"
  assert filesystem.join("s3://b/d?endpoint_override=h:1", "x", "y") == \
      "s3://b/d/x/y?endpoint_override=h:1"
  assert integrity.file_entry(filesystem.join(uri, "f.bin")) == \
      integrity.file_entry(str(tmp_path / "f.bin"))
  assert filesystem.exists(filesystem.join(uri, "f.bin"))
  assert not filesystem.exists(filesystem.join(uri, "g.bin"))
  with pytest.raises(integrity.DataError, match="nosuch://x"):
    filesystem.resolve("nosuch://x")


# BLAKE3's own test vectors (input byte i is i % 251): what b3sum prints.
VECTORS = {0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
           1: "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
           1025: "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
           10_000: "5f81f9e4ab67627b6b036d5d4e3bc40d9d3daa6fcc2b6dd07ab2bbf0a877da54"}


@pytest.mark.parametrize("threads", [1, 3, integrity.blake3.blake3.AUTO])
@pytest.mark.parametrize("window", [999, 4 << 20])  # 999: several windows, the last short.
def test_file_entry_is_what_b3sum_prints_whatever_the_windows_and_threads(
    tmp_path, monkeypatch, threads, window):
  monkeypatch.setattr(integrity, "_WINDOW", window)
  monkeypatch.setattr(integrity, "_CHUNK", window)
  path = tmp_path / "f"
  for size, hexdigest in VECTORS.items():
    path.write_bytes(bytes(i % 251 for i in range(size)))
    expected = {"bytes": size, "blake3": hexdigest}
    assert integrity.file_entry(str(path), threads) == expected
    assert integrity.file_entry(f"file://{path}", threads) == expected
  path.write_bytes(bytes(i % 251 for i in range(10_000 - 1)) + b"\0")
  assert integrity.file_entry(str(path), threads)["blake3"] != VECTORS[10_000]


def test_a_store_sealed_before_still_verifies(tmp_path):
  """meta.json as the earlier reader (reads into a 16 MiB buffer) sealed it."""
  meta = {"splits": {"train": {"rows": 1}},
          "files": {"train/f.bin": {"bytes": 10000, "blake3": VECTORS[10_000]}},
          "fingerprint": "140c543fad229849c329dde2bda9caee5618546b5849cac471a103d0951ea5d5"}
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "f.bin").write_bytes(bytes(i % 251 for i in range(10_000)))
  integrity.check_meta(meta, str(tmp_path / "meta.json"))
  integrity.verify_file(str(tmp_path), "train/f.bin", meta["files"]["train/f.bin"])
  assert integrity.seal({"splits": {"train": {"rows": 1}}}, str(tmp_path),
                        ["train/f.bin"]) == meta
