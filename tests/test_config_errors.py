"""A broken Olive config and a wrong --work-dir, through the project's own scripts: one ERROR line, no traceback,
nothing of the user's deleted."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import bake, run_cli

CONFIG = "fine-tuning/olive-config.json"
# the answers of test_pipeline's and test_benchmark_inference's default run: the session makes it once for all
SMOKE_ANSWERS = dict(finetune_method="lora", base_model="microsoft/Phi-3-mini-4k-instruct", onnx_precision="int4")


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    return bake(tmp_path_factory.mktemp("config-errors"), check_environment=False)


@pytest.fixture
def project(baked, tmp_path):
    """A copy of the baked project, free to break."""
    return Path(shutil.copytree(baked, tmp_path / baked.name))


def one_error(result) -> str:
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), lines
    return lines[0]


def break_json(path: Path) -> str:
    """Add a trailing comma before the config's last brace; returns the ERROR line the scripts must print."""
    text = path.read_text(encoding="utf-8").rstrip()
    broken = text[:-1].rstrip() + ",\n}\n"
    path.write_text(broken, encoding="utf-8")
    try:
        json.loads(broken)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}: {error.msg}"
    else:
        raise AssertionError("the config still parses")
    return f"ERROR: {CONFIG}: not valid JSON ({where}); fix it or regenerate the project"


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


COMMANDS = {
    "run": ["fine-tuning/run.py"],
    "smoke": ["setup/smoke.py"],
    "benchmark_train": ["setup/benchmark_train.py", "--tiny"],
    "prepare": ["datasets/prepare.py", "--check"],
    "check_config": ["fine-tuning/check_config.py"],
}


@pytest.mark.parametrize("script", list(COMMANDS))
def test_a_config_that_is_not_json_is_one_error_line_naming_it(project, python, script):
    expected = break_json(project / CONFIG)
    assert one_error(run_cli([python, *COMMANDS[script]], project)) == expected


def _stray_brace(pre: dict, data: dict) -> None:
    pre["text_template"] += "{"


def _max_seq_len_in_words(pre: dict, data: dict) -> None:
    pre["max_seq_len"] = "2k"


def _no_name(pre: dict, data: dict) -> None:
    del data["name"]


@pytest.mark.parametrize("script", ["smoke", "prepare"])
@pytest.mark.parametrize("edit", [_stray_brace, _max_seq_len_in_words, _no_name])
def test_a_hand_edited_data_config_is_one_error_line(project, python, script, edit):
    """Valid JSON, but a data config the scripts cannot use (prepare.py's Layout reads it for each of them)."""
    path = project / CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    data = config["data_configs"][0]
    edit(data["pre_process_data_config"], data)
    path.write_text(json.dumps(config), encoding="utf-8")
    line = one_error(run_cli([python, *COMMANDS[script]], project))
    assert line.startswith(f"ERROR: {CONFIG}: "), line
    assert line.endswith("regenerate or fix the config"), line


@pytest.mark.parametrize("script", ["run", "benchmark_train"])
def test_a_missing_config_flag_names_the_flag(project, python, script):
    line = one_error(run_cli([python, *COMMANDS[script], "--config", "no-such.json"], project))
    assert line.startswith("ERROR: --config no-such.json: no such file; "), line


def test_check_config_names_a_missing_file_and_the_fix(project, python):
    line = one_error(run_cli([python, "fine-tuning/check_config.py", "no-such.json"], project))
    assert line == "ERROR: no-such.json: no such file; give the path of an Olive workflow config", line
    (project / CONFIG).unlink()
    line = one_error(run_cli([python, "fine-tuning/check_config.py"], project))
    assert line == f"ERROR: {CONFIG}: no such file; regenerate the project", line


def test_a_deleted_config_says_to_regenerate(project, python):
    (project / CONFIG).unlink()
    line = one_error(run_cli([python, "setup/smoke.py"], project))
    assert line == f"ERROR: {CONFIG}: no such file; regenerate the project", line


@pytest.mark.parametrize("work_dir", ["datasets", "gen-model", ".", "datasets/sample.csv"])
def test_smoke_refuses_a_work_dir_it_did_not_make(project, python, work_dir):
    before = listing(project)
    line = one_error(run_cli([python, "setup/smoke.py", "--work-dir", work_dir], project))
    assert line.startswith(f"ERROR: --work-dir {work_dir}: "), line
    assert "choose another --work-dir" in line, line
    assert listing(project) == before


def test_benchmark_without_models_points_to_the_smoke_run(project, python):
    line = one_error(run_cli([python, "inferences/benchmark.py"], project))
    assert "`python fine-tuning/run.py`" in line, line
    # --tiny benchmarks gen-model/smoke, which the offline smoke run makes
    assert "--tiny" in line and "`python setup/smoke.py`" in line, line


@pytest.mark.pipeline
def test_a_broken_config_leaves_the_earlier_smoke_run_as_it_was(smoke, python, tmp_path):
    """The session's smoke run, copied: a broken config stops smoke.py and the --tiny benchmark before anything in
    its folder changes; once fixed, smoke.py runs again into that folder."""
    made, _, _ = smoke(**SMOKE_ANSWERS)
    project = Path(shutil.copytree(made, tmp_path / made.name, ignore=shutil.ignore_patterns("olive-cache")))
    work = project / "gen-model/smoke"
    before = listing(work)
    config = (project / CONFIG).read_text(encoding="utf-8")
    expected = break_json(project / CONFIG)
    # the refusal of a foreign --work-dir comes first: this one is the config's, so the folder was accepted
    assert one_error(run_cli([python, "setup/smoke.py"], project)) == expected
    assert listing(work) == before
    assert one_error(run_cli([python, "inferences/benchmark.py", "--tiny"], project)) == expected
    assert listing(work) == before
    # the second run into the first one's folder: emptied and made again
    (project / CONFIG).write_text(config, encoding="utf-8")
    (work / "left-over.txt").write_text("from the first run", encoding="utf-8")
    result = run_cli([python, "setup/smoke.py"], project, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (work / "left-over.txt").exists()
    assert (work / "smoke-run.json").is_file() and (work / "summary.json").is_file()
