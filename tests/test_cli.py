"""The `ddnb` command: select -> eval round trip, listings, and user mistakes as one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddnb import __version__, cli, locks
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


def test_eval_prints_the_protocol_it_used(capsys, random_set):
    code, out, _ = run_main(capsys, "eval", str(random_set), "--epochs", "1", "--seeds", "1", "--quiet",
                            "--device", "cpu", "--protocol", "idc")
    assert code == 0 and out.strip().endswith("protocol idc (argument, 1 epochs)")


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
    assert_one_line_error(code, err, "--device", "'nodev'", "allowed: cpu", "ddnb select --help")


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
    for name in ("datasets", "methods", "select", "eval", "distill", "run", "report"):
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


def test_run_into_a_used_folder_needs_overwrite(capsys, tmp_path):
    nb = tiny_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "good"
    assert run_main(capsys, "run", str(nb), "--out", str(out), "--quiet")[0] == 0
    record = (out / "results.json").read_text()
    code, _, err = run_main(capsys, "run", str(nb), "-p", "value", "2", "--out", str(out), "--quiet")
    assert_one_line_error(code, err, str(out), "not empty", "--overwrite")
    assert (out / "results.json").read_text() == record  # the good run is kept
    code, _, err = run_main(capsys, "run", str(nb), "-p", "value", "2", "--out", str(out), "--quiet", "--overwrite")
    assert code == 1 and json.loads((out / "results.json").read_text())["status"] == "failed"


def test_report_records_a_run_and_prints_the_table(capsys, tmp_path):
    from ddnb.runs import write_results

    run = tmp_path / "run"
    run.mkdir()
    evaluated = {"idc": {"set": "IDC, 8 iterations", "evaluation": "idc, 300 epochs"}}
    params = {"budget": "cpu", "dataset": "fashion_mnist", "ipc": 10, "seed": 0, "evaluated": evaluated}
    write_results(run, "03_dream", params, {"idc_mean": 75.77, "idc_std": 0.7}, [], [], time.time() - 3120)
    code, out, err = run_main(capsys, "report", str(tmp_path / "results"), "--record", str(run))
    record = tmp_path / "results" / "03_dream" / "cpu-fashion_mnist-ipc10-seed0.json"
    assert code == 0 and record.is_file() and str(record) in err
    assert out.splitlines()[2] == ("| 03 | cpu-fashion_mnist-ipc10-seed0 | idc, 300 epochs | IDC, 8 iterations | "
                                   "75.77 ± 0.70 | 52 min |")
    code, _, err = run_main(capsys, "report", str(tmp_path / "results"), "--record", str(run))
    assert_one_line_error(code, err, "already holds", str(record))
    assert run_main(capsys, "report", str(tmp_path / "results"))[1] == out


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


# ------------------------------------------------------------------ outputs under faults

def _distill_argv(out, seed: int = 0, *extra: str) -> list[str]:
    """argv of a quick `ddnb distill dm` run on digits writing the set `out`."""
    return ["distill", "dm", "--dataset", "digits", "--ipc", "2", "--budget", "smoke", "--seed", str(seed),
            "--out", str(out), "--device", "cpu", *extra]


def _ddnb_process(argv: list[str], cwd) -> subprocess.Popen:
    """`python -m ddnb ARGV` in a real process of its own (stdout and stderr piped as text)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ddnb", *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_distill_runs_on_one_out_the_second_is_refused(tmp_path):
    out = tmp_path / "c" / "same.safetensors"
    lock = tmp_path / "c" / ".same.safetensors.lock"
    procs = {0: _ddnb_process(_distill_argv(out, 0, "--set", "iterations=300"), tmp_path)}
    deadline = time.time() + 120  # the second starts once the first holds the lock (300 iterations: seconds more)
    while not (lock.is_file() and lock.read_text().startswith("pid")) and time.time() < deadline:
        time.sleep(0.05)
    procs[1] = _ddnb_process(_distill_argv(out, 1, "--set", "lr_img=0.5"), tmp_path)
    results = [(p.pid, p.wait(timeout=300), *p.communicate()) for p in procs.values()]
    winners = [r for r in results if r[1] == 0]
    losers = [r for r in results if r[1] != 0]
    assert len(winners) == 1 and len(losers) == 1, [(r[1], r[3][-300:]) for r in results]
    pid, code, _, err = losers[0]
    lines = [line for line in err.splitlines() if line.startswith("ddnb: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"same.safetensors is in use by another ddnb run (pid {winners[0][0]} " in lines[0]
    assert winners[0][0] == procs[0].pid and SyntheticSet.load(out).provenance["seed"] == 0  # the first's set, whole
    assert len(json.loads(out.with_suffix(".history.json").read_text())["loss"]) == 300
    assert not list(out.parent.glob(".*.lock"))  # released at exit


def test_lock_dies_with_a_killed_run(tmp_path):
    out = tmp_path / "k.safetensors"
    proc = _ddnb_process(_distill_argv(out, 0, "--set", "iterations=100000"), tmp_path)
    lock = tmp_path / ".k.safetensors.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().startswith("pid")) and time.time() < deadline:
        time.sleep(0.1)
    assert lock.read_text().startswith(f"pid {proc.pid} ")
    proc.kill()  # kill -9: the OS drops the lock; the file stays behind, harmless
    proc.wait(timeout=60)
    with locks.output_lock(out):  # taken at once: nothing stale
        assert lock.read_text().startswith(f"pid {os.getpid()} ")
    with locks.output_lock(out), pytest.raises(locks.OutputInUse, match=rf"pid {os.getpid()} "):
        with locks.output_lock(out):
            pass


def test_distill_refuses_to_replace_a_file_that_is_not_a_set(capsys, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    code, _, err = run_main(capsys, *_distill_argv(out, 0, "--set", "iterations=2"))
    assert_one_line_error(code, err, str(out), "not a ddnb set", "--overwrite")
    assert out.read_text() == "my notes\n" and not (tmp_path / "notes.checkpoints").exists()
    assert run_main(capsys, *_distill_argv(out, 0, "--set", "iterations=2", "--overwrite"))[0] == 0
    assert SyntheticSet.load(out).n_stored == 20
    other = tmp_path / "other.safetensors"
    assert run_main(capsys, *_distill_argv(other, 0, "--set", "iterations=1"))[0] == 0
    code, _, err = run_main(capsys, *_distill_argv(out, 0, "--set", "iterations=2", "--resume"))
    assert code == 0  # a ddnb set is replaced by the run that made it (or a new one) without --overwrite


def test_distill_removes_temp_files_an_interrupted_run_left(capsys, tmp_path):
    out = tmp_path / "t.safetensors"
    folder = tmp_path / "t.checkpoints"
    folder.mkdir()
    left = [folder / ".history.json.k9abcdef.tmp", folder / ".ckpt_00000002.pt.zz_12345.tmp",
            tmp_path / ".t.safetensors.a1b2c3d4.tmp", tmp_path / ".t.history.json.q1w2e3r4.tmp"]
    others = [tmp_path / ".u.safetensors.a1b2c3d4.tmp", tmp_path / "keep.tmp"]  # another output's, not ours
    for path in left + others:
        path.write_bytes(b"partial")
    assert run_main(capsys, *_distill_argv(out, 0, "--set", "iterations=2"))[0] == 0
    assert not any(p.exists() for p in left) and all(p.exists() for p in others)


def test_a_closed_pipe_ends_quietly():
    # `ddnb methods | head -1`: the reader leaves early; no BrokenPipeError traceback on stderr
    proc = subprocess.run(f"{sys.executable} -m ddnb methods | head -1", shell=True, capture_output=True, text=True)
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_a_nan_stop_is_one_line_with_the_iteration_and_last_checkpoint_exit_3(capsys, tmp_path):
    out = tmp_path / "nan.safetensors"
    code, stdout, err = run_main(capsys, "distill", "dm", "--dataset", "digits", "--ipc", "1", "--budget", "smoke",
                                 "--set", "lr_img=1e38", "checkpoint_every=1", "--device", "cpu", "--out", str(out))
    errors = [line for line in err.splitlines() if line.startswith("ddnb: error:")]
    assert code == cli.EXIT_NAN_STOP == 3 and stdout == "" and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith("ddnb: error: run stopped: dm: ")
    assert " at iteration " in errors[0] and "last good checkpoint: " in errors[0]
    last = errors[0].rsplit("last good checkpoint: ", 1)[1]
    assert Path(last).parent == tmp_path / "nan.checkpoints" and Path(last).is_file()
    assert not out.exists()  # no set is saved from a run that diverged


def test_select_refuses_to_replace_a_file_that_is_not_a_set(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    code, _, err = run_main(capsys, "select", "random", "--dataset", "digits", "--ipc", "1", "--device", "cpu",
                            "--out", str(notes))
    assert_one_line_error(code, err, str(notes), "is not a ddnb set", "--overwrite")
    assert notes.read_text() == "mine"
    code, _, _ = run_main(capsys, "select", "random", "--dataset", "digits", "--ipc", "1", "--device", "cpu",
                          "--out", str(notes), "--overwrite")
    assert code == 0 and SyntheticSet.load(notes).n_stored == 10


def test_an_unwritable_out_fails_before_the_run(capsys, tmp_path, monkeypatch):
    from ddnb.methods import get_method

    def reached(*args, **kwargs):
        """Stands in for the distillation: reaching it means --out was checked too late."""
        raise AssertionError("the run started although --out cannot be written")

    monkeypatch.setattr(get_method("dm"), "fn", reached)
    for out, words in (("/proc/ddnb_test/x.safetensors", "'/proc' is not writable"),
                       ("/sys/x.safetensors", "'/sys' is not writable")):
        code, _, err = run_main(capsys, "distill", "dm", "--dataset", "digits", "--ipc", "1", "--budget", "smoke",
                                "--out", out)
        assert_one_line_error(code, err, f"--out {out!r} cannot be written", words)


def test_eval_of_a_folder_says_it_is_a_folder(capsys, tmp_path):
    code, _, err = run_main(capsys, "eval", str(tmp_path), "--seeds", "1", "--device", "cpu")
    assert_one_line_error(code, err, f"{tmp_path} is a folder; give the path of a ddnb.SyntheticSet")


def test_select_passes_settings_through(capsys, tmp_path):
    path = tmp_path / "w.safetensors"
    code, out, _ = run_main(capsys, "select", "window", "--dataset", "digits", "--ipc", "4", "--device", "cpu",
                            "--set", "beta=1.0", "alpha=0.5", "budget=smoke", "--out", str(path))
    assert code == 0, out
    window = SyntheticSet.load(path).provenance["window"]
    assert window == {"beta": 1.0, "alpha": 0.5, "start": 4, "n_real": 2, "n_distill": 2}


@pytest.mark.parametrize("setting, words", [
    ("nosuch=1", ["'nosuch'", "allowed: beta, alpha, score, budget"]),
    ("scores=1", ["'scores'", "allowed: beta, alpha, score, budget"]),
    ("beta=2", ["beta must be", "got 2"]),
])
def test_select_bad_settings_are_one_line_errors(capsys, tmp_path, setting, words):
    code, _, err = run_main(capsys, "select", "window", "--dataset", "digits", "--ipc", "4", "--device", "cpu",
                            "--set", "budget=smoke", setting, "--out", str(tmp_path / "x.safetensors"))
    assert_one_line_error(code, err, *words)
