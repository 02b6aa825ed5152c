"""Trust (issue 16), section 6: crafted files are checked before they are trusted.

* A checkpoint re-zipped with hundreds of MB of deflated zeros (the issue's had 2.5 GB in
  37.7 MB) was decompressed whole: peak memory grew by the zeros, scaling to an out-of-memory
  kill.  Its archive sizes are now compared with what its tensors and its model need before any
  tensor is read.
* A feature chunk rewritten with all-zero vectors was trusted: every similarity 0.0, no warning.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import CLI_ENV, REPO, cli_inproc, one_line
from helpers.reliability import file_digest

ZEROS_MB = 600

#: Runs one `itkm` command in a child and prints its exit status and the child's peak memory.
PEAK = """
import json, resource, subprocess, sys
p = subprocess.run([sys.executable, "-m", "itkm_engine.cli", *sys.argv[1:]], capture_output=True)
print(json.dumps({"rc": p.returncode, "stderr": p.stderr.decode("utf-8", "replace")[-3000:],
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _peak(*args) -> dict:
    p = subprocess.run([sys.executable, "-c", PEAK, *map(str, args)], env=CLI_ENV, cwd=REPO, capture_output=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return json.loads(p.stdout)


def _rezip(src: Path, dst: Path, *, replace_largest: bool, extra: bool = False, mb: int = ZEROS_MB,
           compress: bool = True) -> None:
    """``src``'s entries copied; the largest tensor's entry (or an extra entry) filled with
    ``mb`` MB of zeros, deflated (a few hundred KB in the file)."""
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        largest = max((i for i in infos if "/data/" in i.filename), key=lambda i: i.file_size)
        with zipfile.ZipFile(dst, "w", allowZip64=True) as zout:
            for info in infos:
                if replace_largest and info.filename == largest.filename:
                    _zeros(zout, info.filename, mb, compress)
                else:
                    zout.writestr(info, zin.read(info.filename), compress_type=zipfile.ZIP_STORED)
            if extra:
                _zeros(zout, largest.filename.rsplit("/", 1)[0] + "/999", mb, compress)


def _zeros(zout: zipfile.ZipFile, name: str, mb: int, compress: bool) -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zout.open(info, "w", force_zip64=True) as fh:
        block = bytes(1 << 20)
        for _ in range(mb):
            fh.write(block)


@pytest.mark.parametrize("how", ["replace", "extra"])
def test_a_checkpoint_rezipped_with_deflated_zeros_is_refused_before_loading(trained_ws, tmp_path, how):
    ckpt = trained_ws / "checkpoints" / "round_0001.pt"
    normal = _peak("query", trained_ws, "1", "--top-k", "3")
    assert normal["rc"] == 0, normal
    crafted = tmp_path / "crafted.pt"
    _rezip(ckpt, crafted, replace_largest=how == "replace", extra=how == "extra")
    assert crafted.stat().st_size < ckpt.stat().st_size + (8 << 20)  # no bigger than a real one on disk
    crafted.replace(ckpt)
    digest = file_digest(ckpt)
    got = _peak("query", trained_ws, "1", "--top-k", "3")
    assert got["rc"] == 2 and "Traceback" not in got["stderr"], got
    line = [ln for ln in got["stderr"].splitlines() if ln.startswith("itkm query: ")]
    assert len(line) == 1 and "round_0001.pt" in line[0] and "refused" in line[0] and "expand" in line[0], got
    # Refused before decompressing: the peak stays that of a normal query (it grew by the zeros).
    assert got["peak_mb"] < normal["peak_mb"] + 150, (normal["peak_mb"], got["peak_mb"])
    assert file_digest(ckpt) == digest


def test_a_tensor_entry_larger_than_its_tensor_is_refused(trained_ws, tmp_path):
    """Stored (not compressed) but 40 MB where the tensor needs less: the archive holds more than
    the pickle declares."""
    from itkm_engine.model.checkpoint import load_checkpoint

    ckpt = trained_ws / "checkpoints" / "round_0001.pt"
    crafted = tmp_path / "crafted.pt"
    _rezip(ckpt, crafted, replace_largest=True, mb=40, compress=False)
    crafted.replace(ckpt)
    rc, _, err = cli_inproc("extract", trained_ws)
    line = one_line(rc, err, "extract")
    assert "round_0001.pt" in line and "its tensor needs" in line, line
    with pytest.raises(Exception, match="its tensor needs"):
        load_checkpoint(ckpt)


def test_model_weights_beyond_what_the_architecture_needs_are_refused(tmp_path, monkeypatch):
    import torch

    import itkm_engine.model.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "_estimated_parameters", lambda name: 1e6)  # a 4 MB model
    path = tmp_path / "big.pt"
    torch.save({"model": {"model_config": {"name": "ViT-B-16"}, "state_dict": {"w": torch.zeros(10_000_000)}}}, path)
    with pytest.raises(Exception, match="more than the model 'ViT-B-16' needs"):
        checkpoint.load_checkpoint(path)
    torch.save({"model": {"model_config": {"name": "ViT-B-16"}, "state_dict": {"w": torch.zeros(100_000)}}}, path)
    assert checkpoint.load_checkpoint(path)["model"]["state_dict"]["w"].shape == (100_000,)


def test_a_feature_chunk_of_zero_vectors_is_recomputed_with_a_warning(trained_ws):
    from itkm_engine.model.checkpoint import checkpoint_key

    folder = trained_ws / "features" / checkpoint_key(trained_ws / "checkpoints" / "round_0001.pt")
    chunk = sorted(folder.glob("chunk_*.npz"))[0]
    with np.load(chunk) as z:
        ids, feats, proj = z["ids"], z["feats"], z["proj"]
    good = feats.astype(np.float32)
    np.savez(chunk, ids=ids, feats=np.zeros_like(feats), proj=proj)
    rc, out, err = cli_inproc("query", trained_ws, str(int(ids[0])), "--top-k", "3", "--json")
    assert rc == 0, err
    assert "damaged" in err and "not unit length" in err and chunk.name in err, err
    first = json.loads(out)
    assert all(m["cosine"] > 0.3 for m in first), out  # was 0.0 for every match (raw cosines)
    rc, _, err = cli_inproc("extract", trained_ws)  # a writer replaces it once
    assert rc == 0 and "not unit length" in err, err
    rc, _, err = cli_inproc("extract", trained_ws)
    assert rc == 0 and "damaged" not in err, err
    rc, out, err = cli_inproc("query", trained_ws, str(int(ids[0])), "--top-k", "3", "--json")
    assert rc == 0 and [m["path"] for m in json.loads(out)] == [m["path"] for m in first], out  # recomputed = stored
    from itkm_engine.features import FeatureCache

    fs = FeatureCache(folder).load()
    np.testing.assert_allclose(np.linalg.norm(fs.feats, axis=1), 1.0, atol=1e-2)
    np.testing.assert_allclose(fs.feats[fs.rows_for(ids[:1])[0]], good[0], atol=2e-3)
