"""What the engine writers share: no partial output, no silent overwrite, lazy engine imports."""

import os
import subprocess
import sys

import pytest

from pqt_compile.export import ExportError
from pqt_compile.export.common import atomic_output

pytestmark = pytest.mark.third_party  # goes through another library (transformers, compressed-tensors, gguf)


@pytest.mark.parametrize("directory", [False, True])
def test_output_appears_only_when_complete(tmp_path, directory):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_output(str(out), directory=directory, force=False) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path)  # beside the output: the rename stays on one filesystem
            raise RuntimeError("failed half-way")
    assert os.listdir(tmp_path) == []  # nothing partial left behind
    with atomic_output(str(out), directory=directory, force=False) as tmp:
        if directory:
            (open(os.path.join(tmp, "a"), "w")).close()
        else:
            open(tmp, "w").write("new")
    assert os.listdir(tmp_path) == ["model"]
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(out).st_mode & 0o777 == (0o777 if directory else 0o666) & ~mask  # not mkstemp's private mode


@pytest.mark.parametrize("directory", [False, True])
def test_existing_output_needs_force(tmp_path, directory):
    out = tmp_path / "model"
    if directory:
        out.mkdir()
        (out / "model.safetensors").write_text("old")
    else:
        out.write_text("old")
    with pytest.raises(ExportError, match="exists; .*force"):
        with atomic_output(str(out), directory=directory, force=False):
            pass
    with atomic_output(str(out), directory=directory, force=True) as tmp:
        if directory:
            open(os.path.join(tmp, "model.safetensors"), "w").write("new")
            open(os.path.join(tmp, "config.json"), "w").close()
        else:
            open(tmp, "w").write("new")
    assert (out / "model.safetensors" if directory else out).read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_force_does_not_replace_a_directory_holding_files_the_export_does_not_write(tmp_path):
    """force=True into a training checkpoint's directory deleted its optimizer state with the old weights."""
    out = tmp_path / "checkpoint"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    (out / "optimizer.pt").write_text("state")
    with pytest.raises(ExportError, match=r"holds optimizer\.pt, which this export does not write"):
        with atomic_output(str(out), directory=True, force=True) as tmp:
            open(os.path.join(tmp, "model.safetensors"), "w").write("new")
    assert sorted(os.listdir(out)) == ["model.safetensors", "optimizer.pt"] and (out / "model.safetensors").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]  # no temporary output left


def test_missing_parent_directory_is_refused(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        with atomic_output(str(tmp_path / "no" / "m.gguf"), directory=False, force=False):
            pass


def test_import_pqt_compile_loads_no_engine_package():
    code = ("import sys, pqt_compile, pqt_compile.export; "
            "print(sorted(m for m in ('gguf', 'safetensors', 'compressed_tensors', 'transformers', 'llama_cpp') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
