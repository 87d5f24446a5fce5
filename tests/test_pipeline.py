"""The generated project's own smoke run: the real Olive workflow, then each backend answers."""

import json
import os
import shutil
import signal
import subprocess
import time

import onnx
import pytest
from conftest import bake, foreground_sigint, run_cli

NEW_TOKENS = 12
FAMILIES = {
    "phi3-4k": "microsoft/Phi-3-mini-4k-instruct",
    "phi3-longrope": "microsoft/Phi-3.5-mini-instruct",
    "phi4-mini": "microsoft/Phi-4-mini-instruct",
}
# (method, precision): int4 is the product's default; fp32 makes the ONNX graph comparable token for token
RUNS = [(m, family, p) for family in FAMILIES for m, p in (("lora", "int4"), ("qlora", "fp32"))]


@pytest.mark.pipeline
@pytest.mark.parametrize(("method", "family", "precision"), RUNS, ids=[f"{m}-{f}-{p}" for m, f, p in RUNS])
def test_smoke_pipeline_trains_merges_builds_and_answers(smoke, method, family, precision):
    project, result, summary = smoke(finetune_method=method, base_model=FAMILIES[family], onnx_precision=precision)
    work = project / "gen-model/smoke"
    assert (work / "adapter/adapter_config.json").is_file()
    assert (work / "adapter/adapter_model.safetensors").is_file()
    assert (work / "merged/config.json").is_file()
    assert list((work / "merged").glob("*.safetensors"))
    assert (work / "onnx/genai_config.json").is_file() and (work / "onnx/model.onnx").is_file()
    assert (work / "training-loss.png").stat().st_size > 1000
    # the adapter was trained on the tiny model, not model-cache/'s: run.py records it for chat.py
    record = json.loads((work / "outputs.json").read_text(encoding="utf-8"))
    assert record["base"] == "tiny-model"  # relative to the record: a moved project finds its own models
    adapter = json.loads((work / "adapter/adapter_config.json").read_text(encoding="utf-8"))
    assert adapter["r"] == 64 and adapter["lora_alpha"] == 64
    # LoRA adapts the model table's modules; olive-ai's QLoRA adapts every 4-bit linear layer
    expected = {"o_proj", "qkv_proj"} if method == "lora" else {"o_proj", "qkv_proj", "gate_up_proj", "down_proj"}
    assert set(adapter["target_modules"]) == expected
    genai = json.loads((work / "onnx/genai_config.json").read_text(encoding="utf-8"))
    assert genai["model"]["decoder"]["session_options"]["provider_options"] == []  # CPU provider
    graph = onnx.load(work / "onnx/model.onnx", load_external_data=False).graph
    matmuls = {node.name: node for node in graph.node if node.op_type.startswith("MatMul")}
    passes = [node["from_pass"] for node in json.loads((work / "onnx/footprint.json").read_text("utf-8")).values()]
    if precision == "int4":
        # Olive's Rtn pass made the 4-bit weights, lm_head included; ModelBuilder only wrote them out
        assert "rtn" in {name.lower() for name in passes if name}
        assert {node.op_type for node in matmuls.values()} == {"MatMulNBits"}
        assert any(name.startswith("/lm_head/") for name in matmuls)
        blocks = {attr.i for node in matmuls.values() for attr in node.attribute if attr.name == "block_size"}
        assert blocks == {32}
    else:
        assert {node.op_type for node in matmuls.values()} == {"MatMul"}

    answers = summary["answers"]
    assert set(answers) == {"adapter", "merged", "onnx"}
    for ids in answers.values():
        assert len(ids) == NEW_TOKENS and len(set(ids)) > 1, answers
    if precision == "fp32":
        # measured: 12 of 12 greedy tokens agree for every family with fp32 ONNX
        assert answers["onnx"] == answers["merged"]
    # int4 on random weights flips near-tied argmaxes (measured: 0-1 of 12 agree); the agreement is reported
    assert "first greedy tokens equal between ONNX and merged PyTorch" in result.stdout


@pytest.mark.pipeline
def test_a_gpu_profile_project_smoke_runs_on_a_cpu_without_its_gpu_settings(smoke):
    """The 40gb profile sets bf16 autocast and Liger's Triton kernels: the CPU smoke run trains without both and
    says so; the project's own config keeps them."""
    project, result, _ = smoke(gpu_memory="40gb", onnx_precision="int4")
    assert "no CUDA GPU here: training without bf16, use_liger_kernel (the GPU profile's)" in result.stdout
    assert (project / "gen-model/smoke/adapter/adapter_model.safetensors").is_file()
    config = json.loads((project / "fine-tuning/olive-config.json").read_text(encoding="utf-8"))
    args = config["passes"]["lora"]["training_args"]
    assert args["bf16"] is True and args["use_liger_kernel"] is True and args["per_device_train_batch_size"] == 4


@pytest.mark.pipeline
def test_qlora_int4_runs_olive_twice_split_at_rtn(smoke):
    """olive-ai 0.13 carries QLoRA's bitsandbytes load settings into the merged model, which Rtn refuses; run.py
    starts a second olive run at Rtn from the merged model."""
    project, result, summary = smoke(finetune_method="qlora", onnx_precision="int4")
    work = project / "gen-model/smoke"
    assert "[run] olive run 1 of 2: qlora, merge" in result.stdout
    assert "[run] olive run 2 of 2: quantize, builder" in result.stdout
    second = json.loads((work / "olive-config.run2.json").read_text(encoding="utf-8"))
    assert second["input_model"]["model_path"] == str(work / "merged/model")
    assert (work / "olive-run2.log").is_file() and (work / "merged/model/config.json").is_file()
    passes = {node["from_pass"] for node in json.loads((work / "onnx/footprint.json").read_text("utf-8")).values()}
    assert {"rtn", "modelbuilder"} <= passes
    graph = onnx.load(work / "onnx/model.onnx", load_external_data=False).graph
    assert {node.op_type for node in graph.node if node.op_type.startswith("MatMul")} == {"MatMulNBits"}
    assert set(summary["answers"]) == {"adapter", "merged", "onnx"}
    assert all(len(ids) == NEW_TOKENS for ids in summary["answers"].values())


@pytest.mark.pipeline
def test_convert_only_project_builds_the_base_model(smoke):
    project, result, summary = smoke(finetune_method="none", onnx_precision="fp32")
    assert set(summary["answers"]) == {"onnx"}
    assert not (project / "gen-model/smoke/adapter").exists()
    assert len(summary["answers"]["onnx"]) == NEW_TOKENS


@pytest.mark.pipeline
def test_training_only_project_stops_after_merge(smoke, python):
    project, result, summary = smoke(onnx_precision="none")
    assert set(summary["answers"]) == {"adapter", "merged"}
    assert all(len(ids) == NEW_TOKENS for ids in summary["answers"].values())
    assert (project / "gen-model/smoke/merged/model/config.json").is_file()
    assert not (project / "gen-model/smoke/onnx").exists()
    assert "ONNX model built for the CPU provider" not in result.stdout
    # no ONNX model in this project: chat.py answers with the merged one by default
    chat = [python, "inferences/chat.py", "--gen-dir", "gen-model/smoke", "--prompt", "Hi", "--max-new-tokens", "3"]
    chat = run_cli(chat, project)
    assert chat.returncode == 0 and "[merged model loaded" in chat.stderr, chat.stderr


@pytest.mark.pipeline
def test_run_wrapper_fails_when_olive_makes_no_model(smoke, python):
    """olive-ai can log 'No output model produced' and exit 0; the wrapper must not."""
    project, _, _ = smoke(finetune_method="none", onnx_precision="fp32")
    config = json.loads((project / "gen-model/smoke/olive-config.json").read_text(encoding="utf-8"))
    config["passes"]["builder"]["precision"] = "fp16"  # pruned by Olive on the CPU provider
    config["output_dir"] = str(project / "gen-model/pruned/onnx")
    path = project / "pruned.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = run_cli([python, "fine-tuning/run.py", "--config", str(path)], project)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR: olive run produced no model")


@pytest.mark.pipeline
def test_run_wrapper_ctrl_c_stops_olive_and_says_what_is_left(smoke, python):
    """Ctrl-C reaches the terminal's whole process group: run.py stops olive and ends with one message."""
    project, _, _ = smoke(finetune_method="none", onnx_precision="fp32")
    config = json.loads((project / "gen-model/smoke/olive-config.json").read_text(encoding="utf-8"))
    config["output_dir"] = str(project / "gen-model/interrupted/onnx")
    config["cache_dir"] = str(project / "interrupted-cache")  # a cache hit would finish before the signal
    path = project / "interrupted.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    run = subprocess.Popen(
        [python, "fine-tuning/run.py", "--config", str(path)], cwd=project, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=foreground_sigint,
    )
    try:
        first = run.stdout.readline()  # olive has started and logs
        assert first, run.stderr.read()
        os.killpg(run.pid, signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130, out[-2000:] + err[-2000:]
    assert err.strip().splitlines()[-1].startswith("Interrupted: gen-model/ keeps the models of the last finished")
    assert "Traceback" not in out + err
    time.sleep(1)
    with pytest.raises(ProcessLookupError):  # olive is not left running
        os.killpg(run.pid, 0)


def test_run_wrapper_names_the_download_when_the_base_model_is_missing(tmp_path, python):
    project = bake(tmp_path)
    result = run_cli([python, "fine-tuning/run.py"], project)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), lines
    assert "python model-cache/download.py" in lines[0]
    base = project / "model-cache/microsoft/Phi-3-mini-4k-instruct"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}", encoding="utf-8")  # what a download that stopped early leaves
    stopped = run_cli([python, "fine-tuning/run.py"], project)
    assert stopped.returncode == 1 and stopped.stderr.startswith("ERROR: "), stopped.stderr
    assert "config.json but no weights" in stopped.stderr and "python model-cache/download.py" in stopped.stderr


@pytest.mark.parametrize("backend", ["adapter", "merged", "onnx"])
def test_chat_names_the_command_when_a_model_is_missing(tmp_path, python, backend):
    project = bake(tmp_path)
    result = run_cli([python, "inferences/chat.py", "--backend", backend, "--prompt", "hi"], project)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "python fine-tuning/run.py" in lines[0]
    assert "--gen-dir gen-model/smoke" in lines[0]  # where the smoke run's models are
    smoke = run_cli([python, "inferences/chat.py", "--backend", backend, "--gen-dir", "gen-model/smoke", "--prompt",
                     "hi"], project)
    assert smoke.returncode == 1 and smoke.stderr.strip().endswith("make it with `python setup/smoke.py`")


@pytest.mark.parametrize(
    ("answers", "backend", "use"),
    [
        ({"onnx_precision": "none"}, "onnx", "use the merged or adapter backend"),
        ({"finetune_method": "none", "execution_provider": "cpu", "onnx_precision": "int4"}, "merged",
         "use the onnx backend"),
        ({"finetune_method": "none", "execution_provider": "cpu", "onnx_precision": "int4"}, "adapter",
         "use the onnx backend"),
    ],
)
def test_chat_says_which_models_the_project_never_makes(tmp_path, python, answers, backend, use):
    """run.py (or the smoke run) would not make this model: naming them as the fix would send the user in circles."""
    project = bake(tmp_path, check_environment=False, **answers)
    for gen_dir in ([], ["--gen-dir", "gen-model/smoke"]):
        result = run_cli([python, "inferences/chat.py", "--backend", backend, *gen_dir, "--prompt", "hi"], project)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR: ") and lines[0].endswith(use), lines
        assert "run.py" not in lines[0] and "smoke.py" not in lines[0]


def test_chat_names_the_download_when_the_base_model_is_missing(tmp_path, python):
    project = bake(tmp_path)
    (project / "gen-model/adapter").mkdir(parents=True)
    (project / "gen-model/adapter/adapter_config.json").write_text("{}", encoding="utf-8")
    result = run_cli([python, "inferences/chat.py", "--backend", "adapter", "--prompt", "hi"], project)
    assert result.returncode == 1 and "no base model yet; download it with `python model-cache/download.py`" in (
        result.stderr
    )


def test_chat_refuses_more_threads_than_cpus(tmp_path, python):
    project = bake(tmp_path)
    many = (os.cpu_count() or 1) + 1
    result = run_cli([python, "inferences/chat.py", "--threads", str(many), "--prompt", "hi"], project)
    assert result.returncode == 2 and f"--threads {many}: this machine has" in result.stderr


@pytest.mark.parametrize("record", ['{"onnx": ', '["onnx"]', '{"onnx": null}'], ids=["cut", "list", "null"])
def test_chat_names_an_unreadable_outputs_record(tmp_path, python, record):
    project = bake(tmp_path)
    (project / "gen-model/outputs.json").write_text(record, encoding="utf-8")
    result = run_cli([python, "inferences/chat.py", "--prompt", "hi"], project)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("ERROR: ") and "outputs.json: unreadable" in result.stderr
    assert "python fine-tuning/run.py" in result.stderr


STREAM = """
import json, sys
sys.path.insert(0, "inferences")
import chat
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("gen-model/smoke/merged")
pieces = []
stream = chat.TextStream(tokenizer, pieces.append)
for token in tokenizer.encode(sys.argv[1], add_special_tokens=False):
    stream.add(token)
stream.end()
print(json.dumps(pieces))
"""


@pytest.mark.pipeline
def test_chat_streams_the_text_the_tokenizer_decodes(smoke, python):
    """Token by token, Phi-3's tokenizer drops each word's leading space: the stream decodes the answer so far."""
    project, _, _ = smoke(finetune_method="lora", base_model=FAMILIES["phi3-4k"], onnx_precision="int4")
    text = "Panels take two days to install, about 5 000 kWh a year."
    result = run_cli([python, "-c", STREAM, text], project)
    assert result.returncode == 0, result.stderr
    pieces = json.loads(result.stdout.strip().splitlines()[-1])
    assert "".join(pieces) == text
    assert len(pieces) > 5  # it streamed, not one piece at the end


@pytest.mark.pipeline
@pytest.mark.parametrize("backend", ["onnx", "merged"])
def test_chat_refuses_a_prompt_longer_than_the_context(smoke, python, backend):
    project, _, _ = smoke(finetune_method="lora", base_model=FAMILIES["phi3-4k"], onnx_precision="int4")
    chat = [python, "inferences/chat.py", "--backend", backend, "--gen-dir", "gen-model/smoke"]
    long = "solar panel warranty inverter " * 1000
    one_shot = run_cli([*chat, "--prompt", long], project)
    assert one_shot.returncode == 1 and "Traceback" not in one_shot.stderr
    assert "ERROR: --prompt: the prompt is " in one_shot.stderr and "the model's context is 4096 tokens" in (
        one_shot.stderr
    )
    # the session goes on after a question that does not fit; an answer that would not fit is cut at the context
    session = run_cli([*chat, "--max-new-tokens", "100000"], project, input_text=f"hi\n{long}\nstill there?\n")
    assert session.returncode == 0 and "Traceback" not in session.stderr, session.stderr
    assert session.stdout.count("model> ") == 3 and session.stderr.count("ERROR: the prompt is ") == 1


@pytest.mark.pipeline
def test_chat_ctrl_c_at_the_prompt_exits_without_a_traceback(smoke, python):
    project, _, _ = smoke(finetune_method="lora", base_model=FAMILIES["phi3-4k"], onnx_precision="int4")
    chat = subprocess.Popen(
        [python, "inferences/chat.py", "--backend", "onnx", "--gen-dir", "gen-model/smoke"], cwd=project,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=foreground_sigint,
    )
    try:
        banner = ""
        while "Ctrl-C stops an answer" not in banner:  # loaded, and about to ask
            banner = chat.stderr.readline()
            assert banner, "chat.py ended before asking"
        time.sleep(0.5)
        chat.send_signal(signal.SIGINT)
        _, err = chat.communicate(timeout=60)
    finally:
        chat.kill()
    assert chat.returncode == 130 and "[interrupted]" in err and "Traceback" not in err


@pytest.mark.pipeline
def test_chat_cli_streams_an_answer_from_the_smoke_model(smoke, python):
    project, _, summary = smoke(finetune_method="lora", base_model=FAMILIES["phi3-4k"], onnx_precision="int4")
    gen = str(project / "gen-model/smoke")
    one_shot = run_cli(
        [python, "inferences/chat.py", "--backend", "onnx", "--gen-dir", gen, "--prompt", "Hello?",
         "--max-new-tokens", "5"], project,
    )
    assert one_shot.returncode == 0, one_shot.stderr
    assert one_shot.stdout.strip()
    repl = run_cli(
        [python, "inferences/chat.py", "--backend", "merged", "--gen-dir", gen, "--max-new-tokens", "5"],
        project, input_text="first question\nsecond question\n\n",
    )
    assert repl.returncode == 0, repl.stderr
    assert repl.stdout.count("model> ") == 2
    both = []
    for dtype in ("float32", "bfloat16"):
        done = run_cli(
            [python, "inferences/chat.py", "--backend", "merged", "--gen-dir", gen, "--prompt", "Hello?",
             "--max-new-tokens", "3", "--dtype", dtype], project,
        )
        assert done.returncode == 0, done.stderr
        both.append(done.stdout)
    assert all(out.strip() for out in both)
    wrong = run_cli([python, "inferences/chat.py", "--backend", "onnx", "--gen-dir", gen, "--prompt", "Hi",
                     "--dtype", "float32"], project)
    assert wrong.returncode == 2 and "--dtype is for the adapter and merged backends" in wrong.stderr
    assert "Traceback" not in wrong.stderr


@pytest.mark.pipeline
def test_chat_answers_on_the_provider_the_model_was_built_for(smoke, python, tmp_path):
    """A CUDA project's smoke run on a machine without CUDA builds for the CPU: chat.py answers there by itself.
    A model built for CUDA, where this genai has no CUDA, is one ERROR line naming --provider cpu."""
    built, _, _ = smoke(finetune_method="lora", base_model=FAMILIES["phi3-4k"], onnx_precision="int4")
    project = tmp_path / "project"
    shutil.copytree(built, project)
    facts_path = project / "setup/project.json"
    facts = json.loads(facts_path.read_text(encoding="utf-8"))
    facts_path.write_text(json.dumps({**facts, "execution_provider": "cuda"}), encoding="utf-8")
    chat = [python, "inferences/chat.py", "--gen-dir", "gen-model/smoke", "--prompt", "Hello?", "--max-new-tokens", "4"]
    on_cpu = run_cli(chat, project)
    assert on_cpu.returncode == 0 and "[onnx model on cpu loaded" in on_cpu.stderr, on_cpu.stderr
    config_path = project / "gen-model/smoke/onnx/genai_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model"]["decoder"]["session_options"]["provider_options"] = [{"cuda": {"enable_cuda_graph": "0"}}]
    config_path.write_text(json.dumps(config), encoding="utf-8")
    on_cuda = run_cli(chat, project)
    assert on_cuda.returncode == 1 and "Traceback" not in on_cuda.stderr
    error = [line for line in on_cuda.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(error) == 1 and error[0].startswith("ERROR: onnx on cuda: ") and "--provider cpu" in error[0]
    assert run_cli([*chat, "--provider", "cpu"], project).returncode == 0
    none = run_cli([*chat[:-1], "0"], project)
    assert none.returncode == 2 and "--max-new-tokens must be at least 1" in none.stderr


TINY_BASE = """
import sys
from pathlib import Path
sys.path.insert(0, "setup")
import project, tiny_model
facts = project.load()
tiny_model.build(facts, Path("datasets/train.jsonl"), Path(facts["model_dir"]))
"""


@pytest.mark.pipeline
def test_run_trains_again_after_the_training_data_changed(tmp_path, python):
    """Olive's cache knows the data only by its path: run.py clears it when the file's contents changed, and
    keeps it when they did not."""
    project = bake(tmp_path, execution_provider="cpu", onnx_precision="none", check_environment=False)
    assert run_cli([python, "-c", TINY_BASE], project).returncode == 0  # a tiny base model in model-cache/
    config_path = project / "fine-tuning/olive-config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for spec in config["passes"].values():
        spec.get("training_args", {}).update(max_steps=4, eval_steps=2)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    adapter = project / "gen-model/adapter/adapter_model.safetensors"

    first = run_cli([python, "fine-tuning/run.py"], project)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    trained_first = adapter.read_bytes()
    again = run_cli([python, "fine-tuning/run.py"], project)
    assert again.returncode == 0 and "Loaded model from cache" in again.stdout  # same data: Olive's cache serves
    assert "[run] the training data" not in again.stdout

    train = project / "datasets/train.jsonl"
    rows = train.read_text(encoding="utf-8").splitlines()
    train.write_text("\n".join(rows[1:] + rows[:1]) + "\n", encoding="utf-8")  # as `prepare.py new.csv --force`
    changed = run_cli([python, "fine-tuning/run.py"], project)
    assert changed.returncode == 0, changed.stdout[-3000:] + changed.stderr[-3000:]
    assert "[run] the training data is changed since the runs in" in changed.stdout
    assert "Loaded model from cache" not in changed.stdout
    assert adapter.read_bytes() != trained_first
