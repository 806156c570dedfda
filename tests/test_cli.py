"""The `ddnb` command: select -> eval round trip, listings, and user mistakes as one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ddnb import __version__, cli
from ddnb.cli import main, parse_settings, parse_value
from ddnb.data import load_dataset
from ddnb.synset import SyntheticSet


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """Call main() in-process; exit status (argparse's SystemExit included), stdout, stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    """Exit 2 with a single `ddnb: error:` line naming `words`, and no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddnb: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def random_set(tmp_path_factory):
    """A random-real digits set saved by `ddnb select` (run once for the module)."""
    path = tmp_path_factory.mktemp("cli") / "random.safetensors"
    assert main(["select", "random", "--dataset", "digits", "--ipc", "3", "--seed", "1", "--out", str(path),
                 "--device", "cpu"]) == 0
    return path


def test_select_saves_the_random_selection(random_set):
    syn = SyntheticSet.load(random_set)
    assert syn.dataset == "digits" and syn.n_stored == 30 and syn.class_counts() == [3] * 10
    data = load_dataset("digits", device="cpu")
    idx = syn.provenance["indices"]
    assert syn.images.cpu().equal(data.x_train[idx]) and syn.provenance["method"] == "random"


def test_eval_json_round_trip(capsys, random_set):
    code, out, _ = run_main(capsys, "eval", str(random_set), "--epochs", "5", "--seeds", "2", "--json",
                            "--device", "cpu")
    assert code == 0
    res = json.loads(out)  # stdout is exactly one JSON object (progress bars go to stderr)
    assert {"mean", "std", "per_seed", "protocol"} <= set(res)
    assert len(res["per_seed"]) == 2 and all(0 <= a <= 100 for a in res["per_seed"])
    assert res["mean"] == pytest.approx(sum(res["per_seed"]) / 2)
    assert res["protocol"]["epochs"] == 5 and res["protocol"]["name"] == "dc"


def test_unknown_method_is_one_line_error(capsys, tmp_path):
    code, _, err = run_main(capsys, "select", "nosuch", "--dataset", "digits", "--ipc", "1",
                            "--out", str(tmp_path / "x.safetensors"))
    assert_one_line_error(code, err, "nosuch", "random")


def test_ipc_larger_than_a_class_is_one_line_error(capsys, tmp_path):
    code, _, err = run_main(capsys, "select", "random", "--dataset", "digits", "--ipc", "1000",
                            "--out", str(tmp_path / "x.safetensors"), "--device", "cpu")
    assert_one_line_error(code, err, "ipc=1000")
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_file_is_one_line_error(capsys, tmp_path):
    code, _, err = run_main(capsys, "eval", str(tmp_path / "missing.safetensors"))
    assert_one_line_error(code, err, "missing.safetensors")


def test_missing_notebook_is_one_line_error(capsys, tmp_path):
    code, _, err = run_main(capsys, "run", str(tmp_path / "nb.ipynb"), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "nb.ipynb")


def test_unknown_distill_method_and_bad_setting(capsys, tmp_path):
    out = str(tmp_path / "d.safetensors")
    code, _, err = run_main(capsys, "distill", "nosuch", "--dataset", "digits", "--ipc", "1", "--out", out)
    assert_one_line_error(code, err, "nosuch")
    code, _, err = run_main(capsys, "distill", "dm", "--dataset", "digits", "--ipc", "1", "--out", out,
                            "--set", "novalue")
    assert_one_line_error(code, err, "novalue")


@pytest.mark.parametrize("argv, words", [
    (["select", "random", "--dataset", "nosuch", "--ipc", "1"], ["nosuch", "digits"]),
    (["distill", "dm", "--dataset", "digits", "--ipc", "1", "--budget", "nosuch"], ["nosuch", "smoke"]),
    (["distill", "dm", "--dataset", "digits", "--ipc", "1", "--budget", "smoke", "--set", "nosuch=1"], ["nosuch"]),
    (["distill", "dm", "--dataset", "digits", "--ipc", "1", "--budget", "smoke", "--set", "arch=nosuch"],
     ["nosuch", "convnet3"]),
])
def test_unknown_names_are_one_line_errors(capsys, tmp_path, argv, words):
    code, _, err = run_main(capsys, *argv, "--out", str(tmp_path / "x.safetensors"))
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "x.safetensors").exists()


def test_a_malformed_device_is_a_usage_error(capsys, tmp_path):
    code, _, err = run_main(capsys, "select", "random", "--dataset", "digits", "--ipc", "1", "--device", "nodev",
                            "--out", str(tmp_path / "x.safetensors"))
    assert code == 2 and "Traceback" not in err and err.startswith("usage: ddnb select")
    assert "--device" in err.splitlines()[-1] and "nodev" in err.splitlines()[-1]


@pytest.mark.parametrize("option, value", [("--arch", "nosuch"), ("--protocol", "nosuch")])
def test_unknown_eval_model_or_protocol_is_one_line_error(capsys, random_set, option, value):
    code, _, err = run_main(capsys, "eval", str(random_set), option, value, "--seeds", "1", "--epochs", "1",
                            "--device", "cpu", "--quiet")
    assert_one_line_error(code, err, value)


def test_a_key_error_inside_a_command_is_a_bug_and_keeps_its_traceback(monkeypatch):
    def broken(args):
        """A command with a bug: a dict lookup that fails."""
        return {}["missing"]

    monkeypatch.setattr(cli, "cmd_methods", broken)
    with pytest.raises(KeyError, match="missing"):
        main(["methods"])


def test_no_command_lists_the_commands_and_exits_2(capsys):
    code, out, err = run_main(capsys)
    assert code == 2 and out == "" and err.startswith("usage: ddnb")
    lines = err.splitlines()
    for name in ("datasets", "methods", "select", "eval", "distill", "run"):
        assert any(line.split()[:1] == [name] and len(line.split()) > 1 for line in lines), name
    assert lines[-1].startswith("ddnb: error: ")


def test_distill_saves_set_history_and_resumes(capsys, tmp_path):
    out = tmp_path / "dm.safetensors"
    argv = ["distill", "dm", "--dataset", "digits", "--ipc", "1", "--budget", "smoke", "--out", str(out),
            "--device", "cpu", "--set", "iterations=2", "dsa_strategy=null"]
    assert run_main(capsys, *argv)[0] == 0
    history = json.loads((tmp_path / "dm.history.json").read_text())
    assert len(history["loss"]) == 2 and history["settings"]["dsa_strategy"] is None
    assert (tmp_path / "dm.checkpoints").is_dir()
    first = SyntheticSet.load(out)
    assert run_main(capsys, *argv, "--resume")[0] == 0  # already finished: restored, not re-run
    assert SyntheticSet.load(out).images.equal(first.images)
    assert len(json.loads((tmp_path / "dm.history.json").read_text())["loss"]) == 2


def tiny_notebook(path):
    """A notebook with a parameters cell that writes results.json and fails unless value == 1."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('output_dir = "out"  # where results go\nvalue = 1  # must be 1')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "assert value == 1, value\n"
        "from ddnb.runs import write_results\n"
        "write_results(output_dir, 'tiny', {'value': value}, {'double': 2 * value}, [])")
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_run_notebook_that_fails_exits_1(capsys, tmp_path):
    nb = tiny_notebook(tmp_path / "tiny.ipynb")
    code, out, err = run_main(capsys, "run", str(nb), "-p", "value", "2", "--out", str(tmp_path / "bad"), "--quiet")
    assert code == 1 and "failed" in out and str(tmp_path / "bad") in out and "Traceback" not in err
    record = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert record["status"] == "failed" and record["params"]["value"] == 2


def test_methods_lists_the_selectors(capsys):
    code, out, _ = run_main(capsys, "methods", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and {"random", "herding", "kcenter"} <= set(rows)
    assert rows["herding"]["kind"] == "select"
    code, out, _ = run_main(capsys, "methods")
    assert code == 0 and "kcenter" in out and "paper:" in out


def test_datasets_lists_digits_as_available(capsys):
    code, out, _ = run_main(capsys, "datasets")
    line = next(line for line in out.splitlines() if line.startswith("digits"))
    assert code == 0 and " yes " in line and "sklearn" in line
    assert {r["name"] for r in json.loads(run_main(capsys, "datasets", "--json")[1])} >= {"digits", "cifar10"}


@pytest.mark.parametrize("argv", [["--help"], ["select", "--help"], ["eval", "--help"], ["distill", "--help"],
                                  ["run", "--help"], ["methods", "--help"], ["datasets", "--help"]])
def test_help_everywhere(capsys, argv):
    code, out, _ = run_main(capsys, *argv)
    assert code == 0 and out.startswith("usage: ddnb")


def test_value_parsing():
    assert parse_settings(["lr=0.1", "iters=20", "dsa=true", "init=noise", "n=null", "name=1e-3x"]) == {
        "lr": 0.1, "iters": 20, "dsa": True, "init": "noise", "n": None, "name": "1e-3x"}
    assert parse_value("[1, 2]") == [1, 2]
    with pytest.raises(ValueError, match="key=value"):
        parse_settings(["=3"])


def test_module_entry_point_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "ddnb", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"ddnb {__version__}"
    done = subprocess.run([sys.executable, "-m", "ddnb.cli", "eval", "no/such/file.safetensors"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("ddnb: error: ") and len(done.stderr.strip().splitlines()) == 1
