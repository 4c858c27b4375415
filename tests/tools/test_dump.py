"""pqt-dump: the command line (its compile is explain's, tested in test_explain.py)."""

import dataclasses
import os

import pytest

from pqt_compile import PQTConfig
from pqt_compile.tools import cli, dump

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "dumps"
    assert dump.main(["--preset", "llama-tiny", "--seq", "16", "--format", "fp4_e2m1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj.weight" in printed and "fp4_e2m1" in printed
    files = os.listdir(out)
    assert len(files) >= 8 and all(os.path.getsize(out / f) > 100 for f in files)


@pytest.mark.parametrize("argv,msg", [(["--preset", "nope"], "unknown"), (["--model", "no_such_mod:f"], "cannot import"),
                                      (["--preset", "gpt2-tiny", "--format", "fp3"], "unknown format"),
                                      (["--preset", "gpt2-tiny", "--block-size", "big"], "block-size"), ([], "--preset")])
def test_cli_errors_are_one_line_and_nonzero(argv, msg, capsys):
    assert dump.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


# A value other than the default for every PQTConfig field, as given on the command line and
# as the config holds it. A field added to PQTConfig without a flag fails the test below.
NON_DEFAULT = {
    "format": (["--format", "int4"], "int4"),
    "block_size": (["--block-size", "16"], 16),
    "mode": (["--mode", "ste"], "ste"),
    "noise": (["--noise", "uniform"], "uniform"),
    "noise_std": (["--noise-std", "0.5"], 0.5),
    "include": (["--include", "a", "--include", "b"], ("a", "b")),
    "exclude": (["--exclude", "head"], ("head",)),
    "sample_in_eval": (["--sample-in-eval"], True),
    "per_rank_noise": (["--per-rank-noise"], True),
    "share_sample": (["--share-sample"], True),
    "tensor_scale_groups": (["--format", "nvfp4", "--tensor-scale-groups", "a,b", "--tensor-scale-groups", "c, d"],
                            (("a", "b"), ("c", "d"))),
}


def test_every_config_field_has_a_flag_that_reaches_the_config(capsys):
    assert set(NON_DEFAULT) == {f.name for f in dataclasses.fields(PQTConfig)}
    with pytest.raises(SystemExit):
        dump.main(["--help"])
    text = capsys.readouterr().out
    parser = dump._parser()
    for field, (argv, value) in NON_DEFAULT.items():
        assert argv[0] in text, field
        config = cli.config_from_arguments(parser.parse_args(["--preset", "gpt2-tiny", *argv]))
        assert getattr(config, field) == value != getattr(PQTConfig(), field), field
    for opt in ("--preset", "--model", "--batch", "--seq", "--out"):
        assert opt in text


def test_tensor_scale_groups_flags():
    """Unset: the format's groups (nvfp4: what vLLM fuses); 'none': a tensor scale per weight."""
    parser = dump._parser()

    def config(*argv):
        return cli.config_from_arguments(parser.parse_args(["--preset", "gpt2-tiny", "--format", "nvfp4", *argv]))

    assert config().tensor_scale_groups == (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
    assert config("--tensor-scale-groups", "none").tensor_scale_groups == ()
    with pytest.raises(cli.UsageError, match="none stands alone"):
        config("--tensor-scale-groups", "none", "--tensor-scale-groups", "a,b")
    with pytest.raises(cli.UsageError, match="two or more module names"):
        config("--tensor-scale-groups", "q_proj")


def test_out_that_is_a_file_is_refused_before_compiling(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    assert dump.main(["--model", "support.check_models:mlp", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "mine"


def test_a_compile_refusal_is_one_line(capsys):
    """A config the pass refuses surfaced as torch.compile's BackendCompilerFailed: ~170 lines, exit 1."""
    assert dump.main(["--model", "support.check_models:odd_width", "--format", "nvfp4", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nvfp4 needs the reduction axis to be a multiple of 16" in err


def test_a_second_dump_replaces_the_first_and_leaves_other_files(tmp_path, capsys):
    """A dump into a directory holding an earlier one's files left them, mixed with its own."""
    out = tmp_path / "dumps"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    (out / "output_code_07.py").write_text("from an earlier dump")
    (out / "joint_09_after_pqt_sample_pass.txt").write_text("from an earlier dump")
    assert dump.main(["--model", "support.check_models:index_first", "--out", str(out)]) == 0  # first output: argmax
    written = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    n = int(written[0].split()[1])
    assert len(os.listdir(out)) == n + 1 and (out / "notes.md").read_text() == "mine"
    assert not (out / "output_code_07.py").exists() and not (out / "joint_09_after_pqt_sample_pass.txt").exists()
