"""The fine-tuned encoder as ONNX: onnxruntime matches torch on 32 of the workspace's crops."""

import json

import pytest

from itkm_engine.onnx_export import OnnxExportError, check_destination, check_onnx
from itkm_engine.session import Session


def test_onnx_matches_torch_on_32_crops_with_scenario_and_group_inputs(trained_ws, tmp_path, capsys):
    import onnx

    from itkm_engine.cli import main

    out = tmp_path / "enc.onnx"
    assert main(["export-onnx", str(trained_ws), str(out), "-q"]) == 0
    assert "onnxruntime vs torch on 32 crops: largest difference" in capsys.readouterr().out
    with Session.open(trained_ws, device="cpu") as s:
        chk = check_onnx(s, out, n=32)
        groups = list(s.model().groups)
        scenarios = list(s.model().scenarios)
    assert chk.n == 32
    assert chk.max_abs_diff < 1e-4, chk
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["itkm.groups"]) == groups and json.loads(meta["itkm.scenarios"]) == scenarios
    assert [i.name for i in proto.graph.input] == ["images", "scenario_idx", "group_idx"]
    assert len(groups) > 1  # the demo has several groups, so the 32 crops mixed them


def test_one_group_file_has_no_group_input_and_matches_that_group(trained_ws, tmp_path):
    import onnx

    from itkm_engine.onnx_export import export_onnx

    with Session.open(trained_ws, device="cpu") as s:
        out = export_onnx(s, tmp_path / "vis.onnx", group="visible")
        chk = check_onnx(s, out, n=8)
        with pytest.raises(OnnxExportError, match="knows no group"):
            export_onnx(s, tmp_path / "x.onnx", group="thermal")
    assert chk.max_abs_diff < 1e-4, chk
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["images", "scenario_idx"]


def test_onnx_destination_is_checked(trained_ws, tmp_path, capsys):
    """The .onnx name, then the check every export makes (folders, links, workspace files...)."""
    from itkm_engine.cli import main
    from itkm_engine.errors import ItkmError
    from itkm_engine.workspace import Workspace

    assert main(["export-onnx", str(trained_ws), str(tmp_path / "enc.txt"), "-q"]) == 2
    assert "does not end in .onnx" in capsys.readouterr().err
    with Workspace.open(trained_ws, readonly=True) as ws:
        with pytest.raises(OnnxExportError, match="does not end in .onnx"):
            check_destination(ws, tmp_path / "enc.txt")
        with pytest.raises(ItkmError, match="does not exist"):
            check_destination(ws, tmp_path / "nope" / "enc.onnx")
        (tmp_path / "d.onnx").mkdir()
        with pytest.raises(ItkmError, match="folder"):
            check_destination(ws, tmp_path / "d.onnx")
        with pytest.raises(ItkmError):
            check_destination(ws, trained_ws / "checkpoints" / "enc.onnx")  # inside the workspace
        assert check_destination(ws, trained_ws / "exports" / "enc.onnx").name == "enc.onnx"
