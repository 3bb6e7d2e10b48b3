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
