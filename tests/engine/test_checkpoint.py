"""Checkpoint files: roundtrip, atomic replacement, refusal of code-running pickles, content keys."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from itkm_engine.errors import ItkmError, UnsafeCheckpointError
from itkm_engine.model import checkpoint as ckpt
from itkm_engine.model.checkpoint import checkpoint_key, load_checkpoint, save_checkpoint


class MarkerPayload:
    """Pickles to a call that creates a file: what a crafted checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def sample_state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "format": "itkm-model",
        "round": 3,
        "scenarios": ["visible-infrared", "cross-camera"],
        "image_size": [64, 32],
        "nested": {"w": torch.randn(4, 5, generator=g), "lr": 3.5e-4, "flag": True, "none": None},
        "tensors": [torch.arange(3), torch.ones(2, dtype=torch.float16)],
    }


def test_roundtrip(tmp_path):
    state = sample_state()
    path = save_checkpoint(tmp_path / "sub" / "round_0001.pt", state)
    assert path.is_file()
    back = load_checkpoint(path)
    assert back["round"] == 3 and back["scenarios"] == state["scenarios"] and back["nested"]["none"] is None
    torch.testing.assert_close(back["nested"]["w"], state["nested"]["w"])
    assert back["tensors"][1].dtype == torch.float16
    assert [p.name for p in path.parent.iterdir()] == ["round_0001.pt"]  # no temporaries left


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "round_0001.pt"
    save_checkpoint(path, {"version": "old", "w": torch.zeros(3)})
    before = path.read_bytes()

    def exploding_save(obj, fh):
        fh.write(b"PK\x03\x04 partial bytes of a new checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"version": "new", "w": torch.ones(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["version"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["round_0001.pt"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    # the payload is live: unpickling it the unsafe way does create its marker
    live = tmp_path / "proof"
    pickle.loads(pickle.dumps(MarkerPayload(str(live))))
    assert live.exists()

    path = tmp_path / "evil.pt"
    state = {"w": torch.zeros(2), "payload": MarkerPayload(str(marker))}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(state, fh)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path)
    assert "refused" in str(err.value) and "run code" in str(err.value)
    if writer == "torch.save":  # torch's own format gets as far as naming the callable
        assert "makedirs" in str(err.value)
    assert isinstance(err.value, ItkmError)
    assert not marker.exists()


def test_truncated_empty_junk_and_missing_files_raise_clear_errors(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", sample_state())
    data = good.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "junk.pt": b"this is not a checkpoint at all",
    }
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ItkmError, match="damaged") as err:
            load_checkpoint(p)
        assert not isinstance(err.value, UnsafeCheckpointError)
        assert name in str(err.value)
    with pytest.raises(ItkmError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ItkmError, match="not a file"):
        load_checkpoint(tmp_path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ItkmError, match="not an ITKM checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_checkpoint_key_is_content_hash_and_cached(tmp_path, monkeypatch):
    a = save_checkpoint(tmp_path / "a.pt", {"w": torch.zeros(3)})
    b = tmp_path / "b.pt"
    b.write_bytes(a.read_bytes())
    ka = checkpoint_key(a)
    assert len(ka) == 16 and all(c in "0123456789abcdef" for c in ka)
    assert checkpoint_key(b) == ka  # same content, same key, whatever the name

    # a second call on an unchanged file does not rehash
    class NoHash:
        def __init__(self, *a, **k):
            raise AssertionError("rehashed an unchanged file")

    monkeypatch.setattr(ckpt.hashlib, "sha256", NoHash)
    assert checkpoint_key(a) == ka
    monkeypatch.undo()

    save_checkpoint(a, {"w": torch.ones(3)})  # new content (size and mtime change)
    os.utime(a, ns=(os.stat(a).st_atime_ns, os.stat(a).st_mtime_ns + 10**9))
    assert checkpoint_key(a) != ka
    with pytest.raises(ItkmError, match="cannot be read"):
        checkpoint_key(tmp_path / "missing.pt")
