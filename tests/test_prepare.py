"""datasets/prepare.py of a generated project: every input format, every bad-input class, safe writes, and a
prepared file that Olive's own data config of the project turns into training samples."""

import csv
import hashlib
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import bake, run_cli

QUESTION, ANSWER = "Question", "Best Answer"
ROWS = [
    {QUESTION: f"How do I reset inverter {n}?", ANSWER: f"Hold the reset button for {n} seconds, then wait."}
    for n in range(1, 21)
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return bake(tmp_path_factory.mktemp("prepare"), check_environment=False)


@pytest.fixture
def prepare(project, python):
    """Run the project's prepare.py on clean outputs; returns a function giving the finished process."""
    for name in ("train.jsonl", "eval.jsonl"):
        (project / "datasets" / name).unlink(missing_ok=True)

    def run(*args):
        return run_cli([python, "datasets/prepare.py", *map(str, args)], project, timeout=300)

    return run


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def outputs(project: Path) -> list[dict]:
    return read_jsonl(project / "datasets/train.jsonl") + read_jsonl(project / "datasets/eval.jsonl")


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=[QUESTION, ANSWER], delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def one_error(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    return lines[0]


# --- the sample set --------------------------------------------------------------------------------------


def test_generation_prepares_the_sample_set(project):
    sample = list(csv.DictReader(open(project / "datasets/sample.csv", encoding="utf-8", newline="")))
    assert len(sample) >= 200
    assert set(sample[0]) == {QUESTION, ANSWER}
    train, evaluation = (read_jsonl(project / f"datasets/{name}.jsonl") for name in ("train", "eval"))
    assert len(evaluation) == round(len(sample) * 0.1)
    assert len(train) + len(evaluation) == len(sample)
    assert {r[QUESTION] for r in train}.isdisjoint(r[QUESTION] for r in evaluation)
    assert any("\n" in r[ANSWER] for r in train + evaluation)  # quoted newlines survive the CSV reader


def test_sample_set_uses_the_projects_column_names(tmp_path, python):
    project = bake(tmp_path, question_column='Ask "me", now', answer_column="Réponse", check_environment=False)
    header = next(csv.reader(open(project / "datasets/sample.csv", encoding="utf-8", newline="")))
    assert header == ['Ask "me", now', "Réponse"]
    assert set(read_jsonl(project / "datasets/train.jsonl")[0]) == {'Ask "me", now', "Réponse"}


# --- every input format ----------------------------------------------------------------------------------


def write_format(fmt: str, folder: Path) -> Path:
    if fmt in ("csv", "tsv"):
        rows = [dict(r) for r in ROWS]
        rows[0][ANSWER] = 'First, hold "reset".\nThen, wait.'  # quoted comma, quote and newline
        return write_csv(folder / f"data.{fmt}", rows, "," if fmt == "csv" else "\t")
    if fmt == "json":
        path = folder / "data.json"
        path.write_text(json.dumps(ROWS, indent=1), encoding="utf-8")
    elif fmt == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif fmt == "hf":
        from datasets import Dataset, DatasetDict

        path = folder / "hf-data"
        DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:2])}).save_to_disk(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet", "hf"])
def test_each_format_becomes_the_train_and_eval_files(project, prepare, tmp_path, fmt):
    source = write_format(fmt, tmp_path)
    result = prepare(source)
    assert result.returncode == 0, result.stderr
    assert f"Read 20 rows from {source} ({fmt}); kept 20" in result.stdout
    rows = outputs(project)
    assert len(rows) == 20 and len(read_jsonl(project / "datasets/eval.jsonl")) == 2
    by_question = {r[QUESTION]: r[ANSWER] for r in rows}
    expected = {r[QUESTION]: r[ANSWER] for r in ROWS}
    if fmt in ("csv", "tsv"):
        expected[ROWS[0][QUESTION]] = 'First, hold "reset".\nThen, wait.'
    assert by_question == expected


def test_chat_rows_are_rendered_with_the_models_chat_format(project, prepare, tmp_path):
    source = tmp_path / "chats.jsonl"
    chats = [
        {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Do panels work at night?"}, {"role": "assistant", "content": "No."},
        ]},
        {"conversations": [{"from": "human", "value": "Is hail a risk?"}, {"from": "gpt", "value": "Rarely."}]},
    ]
    source.write_text("".join(json.dumps(c) + "\n" for c in chats * 2), encoding="utf-8")
    result = prepare(source, "--check")
    assert result.returncode == 0 and "kept 2" in result.stdout and "duplicate of an earlier row" in result.stdout
    assert prepare(source).returncode == 0
    template = json.loads((project / "fine-tuning/olive-config.json").read_text("utf-8"))["data_configs"][0]
    text_template = template["pre_process_data_config"]["text_template"]
    texts = {text_template.format(**row) for row in outputs(project)}
    assert texts == {
        "<|user|>\nBe brief.\n\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nDo panels work at night?<|end|>\n"
        "<|assistant|>\nNo.<|end|>",
        "<|user|>\nIs hail a risk?<|end|>\n<|assistant|>\nRarely.<|end|>",
    }


# --- bad input: each class has its message ---------------------------------------------------------------

BAD_ROWS = [
    ({QUESTION: "", ANSWER: "a"}, "empty 'Question'"),
    ({QUESTION: "q1", ANSWER: "   "}, "empty 'Best Answer'"),
    ({QUESTION: 7, ANSWER: "a"}, "'Question' is not text (int)"),
    ({QUESTION: "q2", ANSWER: ["a"]}, "'Best Answer' is not text (list)"),
    ({QUESTION: "Question", ANSWER: "Best Answer"}, "header row repeated as data"),
    ({QUESTION: "q3 <|end|>", ANSWER: "a"}, "text contains the chat token <|end|>"),
    ({QUESTION: "q4", ANSWER: "a <|endoftext|>"}, "text contains the chat token <|endoftext|>"),
    ({ANSWER: "only an answer"}, "no 'Question' column"),
    ({"messages": [{"role": "user", "content": "no answer"}]}, "conversation must end with an assistant turn"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "unknown role 'bot'"),
    ("a string, not an object", "not a JSON object"),
]


def test_every_bad_row_class_is_dropped_and_counted_with_its_line(prepare, tmp_path):
    lines = [json.dumps(r) for r in ROWS[:4]]
    lines += [json.dumps(row) for row, _ in BAD_ROWS]
    lines += ["{not json", json.dumps(ROWS[0])]
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = prepare(source, "--check")
    assert result.returncode == 0, result.stderr
    assert f"Read {len(lines)} rows" in result.stdout and "kept 4" in result.stdout
    assert f"Dropped {len(lines) - 4}:" in result.stdout
    for number, (_, message) in enumerate(BAD_ROWS, start=5):
        reported = [line for line in result.stdout.splitlines() if message in line]
        assert reported and f"line {number}" in reported[0], (message, result.stdout)
    assert f"not valid JSON (Expecting property name enclosed in double quotes) (line {len(lines) - 1})" in (
        result.stdout
    )
    assert f"duplicate of an earlier row (line {len(lines)})" in result.stdout


def test_csv_row_with_wrong_field_count_is_reported(prepare, tmp_path):
    source = write_csv(tmp_path / "data.csv", ROWS[:3])
    source.write_text(source.read_text("utf-8") + "only one field\n", encoding="utf-8")
    result = prepare(source, "--check")
    assert result.returncode == 0, result.stderr
    assert "1 fields where the header has 2 (line 5)" in result.stdout


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"Question,Best Answer\nfine,row\n\x93smart quotes\x94,row\n", "cp1252.csv",
         "line 3 is not valid UTF-8 (byte 0x93); save the file as UTF-8, or pass --encoding"),
        (b"q,a\nx,y\n", "columns.csv",
         "no column 'Question'; the file has 'q', 'a': pass --question-column with the right one"),
        (b'{"rows": [1, 2]}', "object.json", "a JSON object, expected a list of rows; the rows may be under 'rows'"),
        (b"[1, 2,", "broken.json", "not valid JSON at line 1, column 7"),
        (b"", "empty.csv", "empty file; the first line must name the columns"),
        (b"Question,Best Answer\nonly,one\n", "one.csv", "1 usable row; training needs at least 2"),
        (b"x", "data.xlsx", "unknown file type '.xlsx'; pass --format"),
        (b"Question,Best Answer,Question\na,b,c\n", "dupcol.csv",
         "column 'Question' appears more than once (columns 1, 3); rename one"),
        (b'Question,Best Answer\nq1,"never closed\nq2,a2\nq3,a3\n', "quote.csv",
         "the row starting at line 2 cannot be read: a quote is never closed; fix the quoting"),
    ],
    ids=["encoding", "columns", "json-object", "json-syntax", "empty", "too-few", "suffix", "duplicate-column",
         "unclosed-quote"],
)
def test_unusable_file_gets_one_line_naming_the_fix(prepare, project, tmp_path, content, name, message):
    source = tmp_path / name
    source.write_bytes(content)
    error = one_error(prepare(source))
    assert error.startswith(f"ERROR: {source}: ") and message in error
    assert not (project / "datasets/train.jsonl").exists()


def test_same_question_file_is_refused(prepare, tmp_path):
    source = tmp_path / "same.csv"
    source.write_text("Question,Best Answer\nsame,a\nsame,b\n", encoding="utf-8")
    assert "every usable row asks the same question" in one_error(prepare(source))


@pytest.mark.parametrize(
    ("content", "args"),
    [
        ("Question;Best Answer\nq1;a, with comma\nq2;a2\n", []),
        ("sep=;\nQuestion;Best Answer\nq1;a, with comma\nq2;a2\n", []),
        ("Question|Best Answer\nq1|a, with comma\nq2|a2\n", ["--delimiter", "|"]),
    ],
    ids=["semicolon-header", "excel-sep-line", "flag"],
)
def test_other_csv_separators(prepare, project, tmp_path, content, args):
    source = tmp_path / "europe.csv"
    source.write_text(content, encoding="utf-8")
    result = prepare(source, *args)
    assert result.returncode == 0, result.stderr
    assert {r[QUESTION]: r[ANSWER] for r in outputs(project)} == {"q1": "a, with comma", "q2": "a2"}


@pytest.mark.parametrize("delimiter", ["ab", "", '"', "\n"], ids=["two-characters", "empty", "quote", "newline"])
def test_delimiter_that_cannot_separate_is_a_usage_error(prepare, tmp_path, delimiter):
    result = prepare(write_csv(tmp_path / "d.csv", ROWS), "--delimiter", delimiter, "--check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --delimiter is one character" in result.stderr


def test_delimiter_backslash_t_typed_literally_is_a_tab(prepare, project, tmp_path):
    # the comma in the header would make the separator guess ','
    source = tmp_path / "tabs.csv"
    source.write_text("Question\tBest Answer, in full\nq1\ta, with comma\nq2\ta2\n", encoding="utf-8")
    result = prepare(source, "--delimiter", "\\t", "--answer-column", "Best Answer, in full")
    assert result.returncode == 0, result.stderr
    assert {r[QUESTION]: r[ANSWER] for r in outputs(project)} == {"q1": "a, with comma", "q2": "a2"}


def test_huge_field_is_read(prepare, project, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[0][ANSWER] = "long answer " * 20000  # 240 000 characters, over the csv module's default field cap
    result = prepare(write_csv(tmp_path / "huge.csv", rows), "--check")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "longer than max_seq_len" in result.stdout


def test_broken_datasets_folder_gets_one_line(prepare, tmp_path):
    folder = tmp_path / "hf-broken"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}", encoding="utf-8")
    assert "not a readable datasets folder" in one_error(prepare(folder))


def test_cp1252_file_reads_with_its_encoding(prepare, project, tmp_path):
    source = tmp_path / "excel.csv"
    source.write_bytes(b"Question,Best Answer\n\x93Smart\x94 quotes?,Yes\nPlain?,Yes\n")
    result = prepare(source, "--encoding", "cp1252")
    assert result.returncode == 0, result.stderr
    # latin-1 would also read every byte, as the control characters U+0093 and U+0094
    assert sorted(row[QUESTION] for row in outputs(project)) == ["Plain?", "\u201cSmart\u201d quotes?"]


def test_missing_source_and_own_output_are_refused(prepare, project, tmp_path):
    assert "no such file" in one_error(prepare(tmp_path / "nope.csv"))
    assert prepare(write_csv(tmp_path / "d.csv", ROWS)).returncode == 0
    assert "is an output of this script" in one_error(prepare("datasets/train.jsonl"))


# --- lengths: exact with the model's tokenizer, estimated without ----------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(project, python, tmp_path_factory):
    """The offline tokenizer of the smoke run, built the way setup/tiny_model.py builds it."""
    out = tmp_path_factory.mktemp("tokenizer")
    corpus = out / "corpus.jsonl"
    sample = csv.DictReader(open(project / "datasets/sample.csv", encoding="utf-8", newline=""))
    corpus.write_text("".join(json.dumps(row) + "\n" for row in sample), encoding="utf-8")
    script = textwrap.dedent(f"""
        import pathlib, sys
        sys.path.insert(0, "setup")
        import project, tiny_model
        tiny_model.build_tokenizer(project.load(), pathlib.Path({str(corpus)!r}), pathlib.Path({str(out)!r}))
    """)
    result = run_cli([python, "-c", script], project)
    assert result.returncode == 0, result.stderr
    return out


def token_count(tokenizer_dir: Path, text: str) -> int:
    """As Olive counts: the transformers tokenizer, no special tokens."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(tokenizer_dir))(text, add_special_tokens=False)["input_ids"])


def long_rows(tmp_path: Path) -> Path:
    rows = [dict(r) for r in ROWS]
    rows[3][ANSWER] = "The panel output drops when dust builds up on the glass. " * 150
    rows[7][ANSWER] = "Snow slides off tilted panels within a day or two of sunshine. " * 150
    return write_csv(tmp_path / "long.csv", rows)


def test_over_length_rows_are_dropped_by_exact_token_count(prepare, project, tokenizer_dir, tmp_path):
    result = prepare(long_rows(tmp_path), "--tokenizer", tokenizer_dir)
    assert result.returncode == 0, result.stderr
    assert "Tokens per sample, counted with the tokenizer in" in result.stdout
    assert "2  longer than max_seq_len 2048 tokens (line 5, line 9)" in result.stdout
    config = json.loads((project / "fine-tuning/olive-config.json").read_text("utf-8"))
    template = config["data_configs"][0]["pre_process_data_config"]["text_template"]
    counts = [token_count(tokenizer_dir, template.format(**row)) for row in outputs(project)]
    assert len(counts) == 18 and max(counts) <= 2048
    assert f"max {max(counts)};" in result.stdout


def test_truncate_cuts_the_answer_to_fit_and_keeps_the_end_token(prepare, project, tokenizer_dir, tmp_path):
    result = prepare(long_rows(tmp_path), "--tokenizer", tokenizer_dir, "--over-length", "truncate")
    assert result.returncode == 0, result.stderr
    assert "Truncated 2 answers to fit (line 5, line 9)" in result.stdout
    rows = outputs(project)
    assert len(rows) == 20
    config = json.loads((project / "fine-tuning/olive-config.json").read_text("utf-8"))
    template = config["data_configs"][0]["pre_process_data_config"]["text_template"]
    cut = [r for r in rows if r[ANSWER].startswith("The panel output")][0]
    assert 2000 < token_count(tokenizer_dir, template.format(**cut)) <= 2048
    assert template.format(**cut).endswith("<|end|>")


def test_without_a_tokenizer_lengths_are_an_announced_estimate(prepare, tmp_path):
    result = prepare(long_rows(tmp_path))  # the base model is not in model-cache/ yet
    assert result.returncode == 0, result.stderr
    assert "Tokens per sample, estimated at 3.5 characters per token" in result.stdout
    assert "2  longer than max_seq_len 2048 tokens" in result.stdout


def model_cache_dir(project: Path) -> Path:
    return project / json.loads((project / "setup/project.json").read_text("utf-8"))["model_dir"]


@pytest.fixture
def model_cache(project):
    """The default tokenizer folder of the shared project, emptied again after the test."""
    folder = model_cache_dir(project)
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(project / "model-cache" / folder.relative_to(project / "model-cache").parts[0])


def empty_vocabulary(folder: Path, tokenizer_dir: Path) -> Path:
    """A tokenizer that loads but knows no token: it encodes any text to nothing."""
    from tokenizers import Tokenizer, models

    folder.mkdir(parents=True, exist_ok=True)
    Tokenizer(models.BPE()).save(str(folder / "tokenizer.json"))
    shutil.copy(tokenizer_dir / "tokenizer_config.json", folder)
    return folder


def test_complete_model_cache_tokenizer_counts_by_default(prepare, model_cache, tokenizer_dir, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, model_cache)
    result = prepare(long_rows(tmp_path), "--check")
    assert result.returncode == 0, result.stderr
    assert "Tokens per sample, counted with the tokenizer in model-cache/microsoft/Phi-3-mini-4k-instruct:" in (
        result.stdout
    )


@pytest.mark.parametrize("kind", ["config-only", "empty-vocabulary"])
def test_incomplete_model_cache_tokenizer_falls_back_to_the_estimate_with_the_reason(
    prepare, model_cache, tokenizer_dir, tmp_path, kind
):
    # transformers builds a tokenizer from tokenizer_config.json alone, with an empty vocabulary: every sample
    # would count 0 tokens and no row would ever be over max_seq_len
    if kind == "config-only":
        shutil.copy(tokenizer_dir / "tokenizer_config.json", model_cache)
        reason = ("no tokenizer.json (nor tokenizer.model, nor vocab.json + merges.txt); download incomplete? "
                  "python model-cache/download.py")
    else:
        empty_vocabulary(model_cache, tokenizer_dir)
        reason = "its tokenizer encodes text to 0 tokens"
    result = prepare(long_rows(tmp_path), "--check")
    assert result.returncode == 0, result.stderr
    assert (
        "Tokens per sample, estimated at 3.5 characters per token "
        f"(model-cache/microsoft/Phi-3-mini-4k-instruct: {reason}"
    ) in result.stdout
    assert "2  longer than max_seq_len 2048 tokens" in result.stdout
    assert "p50 0," not in result.stdout


def test_explicit_tokenizer_json_folder_counts_with_that_file(prepare, project, tokenizer_dir, tmp_path):
    folder = tmp_path / "json-only"
    folder.mkdir()
    shutil.copy(tokenizer_dir / "tokenizer.json", folder)
    assert "tokenizer.json" in prepare("--help").stdout
    result = prepare(long_rows(tmp_path), "--tokenizer", folder)
    assert result.returncode == 0, result.stderr
    assert f"Tokens per sample, counted with the tokenizer in {folder} (tokenizer.json alone:" in result.stdout
    assert "2  longer than max_seq_len 2048 tokens (line 5, line 9)" in result.stdout
    from transformers import PreTrainedTokenizerFast

    alone = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    config = json.loads((project / "fine-tuning/olive-config.json").read_text("utf-8"))
    template = config["data_configs"][0]["pre_process_data_config"]["text_template"]
    counts = [len(alone(template.format(**row), add_special_tokens=False)["input_ids"]) for row in outputs(project)]
    assert f"max {max(counts)};" in result.stdout


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such folder"),
        ("config-only", "no tokenizer.json"),
        ("malformed-config", "cannot load its tokenizer (JSONDecodeError"),
        ("empty-vocabulary", "its tokenizer encodes text to 0 tokens"),
    ],
)
def test_explicit_unusable_tokenizer_gets_one_line_naming_the_flag(
    prepare, project, tokenizer_dir, tmp_path, kind, message
):
    folder = tmp_path / kind
    if kind == "config-only":
        folder.mkdir()
        shutil.copy(tokenizer_dir / "tokenizer_config.json", folder)
    elif kind == "malformed-config":
        shutil.copytree(tokenizer_dir, folder)
        (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTok', encoding="utf-8")
    elif kind == "empty-vocabulary":
        empty_vocabulary(folder, tokenizer_dir)
    error = one_error(prepare(write_csv(tmp_path / "d.csv", ROWS), "--tokenizer", folder))
    assert error.startswith(f"ERROR: --tokenizer: {folder}: {message}"), error
    assert "pass the folder that holds the model's tokenizer.json" in error
    assert not (project / "datasets/train.jsonl").exists()


# --- preview, split, safe writes -------------------------------------------------------------------------


def test_preview_prints_samples_exactly_as_training_sees_them_and_writes_nothing(prepare, project, tmp_path):
    result = prepare(write_csv(tmp_path / "d.csv", ROWS), "--preview", "2")
    assert result.returncode == 0
    assert not (project / "datasets/train.jsonl").exists()
    assert result.stdout.count("--- sample ") == 2
    first = result.stdout.split("--- sample 1 ")[1].split("--- sample 2")[0]
    assert "[prompt]\n<|user|>\nHow do I reset inverter 1?<|end|>\n<|assistant|>\n[answer]\n" in first
    assert "Hold the reset button for 1 seconds, then wait.<|end|>\n" in first


def test_split_is_deterministic_and_follows_the_seed(prepare, project, tmp_path):
    source = write_csv(tmp_path / "d.csv", ROWS)
    assert prepare(source).returncode == 0
    first = read_jsonl(project / "datasets/eval.jsonl")
    again = prepare(source)
    assert "(unchanged;" in again.stdout and read_jsonl(project / "datasets/eval.jsonl") == first
    other = prepare(source, "--seed", "7", "--force")
    assert other.returncode == 0 and read_jsonl(project / "datasets/eval.jsonl") != first


def test_split_keeps_a_question_on_one_side_and_is_stable_when_rows_are_added(prepare, project, tmp_path):
    rows = ROWS + [{QUESTION: ROWS[n][QUESTION], ANSWER: f"Another answer {n}."} for n in range(0, 20, 2)]
    assert prepare(write_csv(tmp_path / "d.csv", rows)).returncode == 0
    train, evaluation = (read_jsonl(project / f"datasets/{n}.jsonl") for n in ("train", "eval"))
    assert len(evaluation) >= 3
    assert {r[QUESTION] for r in train}.isdisjoint(r[QUESTION] for r in evaluation)
    more = rows + [{QUESTION: "A brand new question?", ANSWER: "A new answer."}]
    assert prepare(write_csv(tmp_path / "more.csv", more), "--force").returncode == 0
    after = {r[QUESTION] for r in read_jsonl(project / "datasets/eval.jsonl")}
    assert len({r[QUESTION] for r in evaluation} - after) <= 1


def test_outputs_are_readable_by_others_like_any_new_file(prepare, project, tmp_path):
    assert prepare(write_csv(tmp_path / "d.csv", ROWS)).returncode == 0
    for name in ("train.jsonl", "eval.jsonl"):
        assert (project / "datasets" / name).stat().st_mode & 0o777 == 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_source_is_never_modified_and_different_outputs_need_force(prepare, project, tmp_path):
    source = write_csv(tmp_path / "d.csv", ROWS)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert prepare(source).returncode == 0
    before = (project / "datasets/train.jsonl").read_bytes()
    smaller = write_csv(tmp_path / "smaller.csv", ROWS[:10])
    error = one_error(prepare(smaller))
    assert "already holds different rows; pass --force" in error
    assert (project / "datasets/train.jsonl").read_bytes() == before
    assert prepare(smaller, "--force").returncode == 0
    assert len(outputs(project)) == 10
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest


def test_interrupted_write_leaves_the_old_files_whole(prepare, project, python, tmp_path):
    assert prepare(write_csv(tmp_path / "d.csv", ROWS)).returncode == 0
    before = {n: (project / "datasets" / n).read_bytes() for n in ("train.jsonl", "eval.jsonl")}
    # Ctrl-C after the first file is staged: the second fsync raises KeyboardInterrupt
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, "datasets")
        import prepare
        calls = []
        real = os.fsync
        def interrupted(fd):
            calls.append(fd)
            if len(calls) == 2:
                raise KeyboardInterrupt
            real(fd)
        prepare.os.fsync = interrupted
        prepare.main([{str(write_csv(tmp_path / "new.csv", ROWS[:12]))!r}, "--force"])
    """)
    result = run_cli([python, "-c", script], project)
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr
    assert {n: (project / "datasets" / n).read_bytes() for n in before} == before
    assert sorted(p.name for p in (project / "datasets").iterdir() if p.name.startswith(".")) == []


# --- what Olive makes of it ------------------------------------------------------------------------------


def test_prepared_sample_yields_training_samples_through_olives_own_data_config(project, python, tokenizer_dir):
    assert run_cli([python, "datasets/prepare.py", "--force"], project).returncode == 0
    script = textwrap.dedent(f"""
        import json
        from olive.workflows.run.config import RunConfig
        config = json.load(open("fine-tuning/olive-config.json", encoding="utf-8"))
        config["input_model"]["model_path"] = {str(tokenizer_dir)!r}
        config.pop("passes")
        run_config = RunConfig.parse_file_or_obj(config)
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(tokenizer_dir)!r})
        counts = {{}}
        for data_config in run_config.data_configs:
            container = data_config.to_data_container()
            dataset = container.pre_process(container.load_dataset())
            counts[data_config.name] = len(dataset)
            # what Olive trains on is exactly the filled-in template that --preview prints: no BOS/EOS around it
            first = json.loads(open(data_config.load_dataset_config.params["data_files"]).readline())
            text = data_config.pre_process_params["text_template"].format(**first)
            expected = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert dataset[0][0]["input_ids"].tolist() == expected, (dataset[0][0]["input_ids"].tolist(), expected)
        print(json.dumps(counts))
    """)
    result = run_cli([python, "-c", script], project)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts == {
        "train_data": len(read_jsonl(project / "datasets/train.jsonl")),
        "eval_data": len(read_jsonl(project / "datasets/eval.jsonl")),
    }


def test_smoke_run_and_run_wrapper_name_prepare_when_the_training_data_is_gone(tmp_path, python):
    project = bake(tmp_path, check_environment=False)
    (project / "datasets/train.jsonl").unlink()
    smoke = run_cli([python, "setup/smoke.py"], project)
    assert "run `python datasets/prepare.py` first" in one_error(smoke)
    (project / "model-cache/microsoft/Phi-3-mini-4k-instruct").mkdir(parents=True)
    (project / "model-cache/microsoft/Phi-3-mini-4k-instruct/config.json").write_text("{}", encoding="utf-8")
    (project / "model-cache/microsoft/Phi-3-mini-4k-instruct/model.safetensors").write_bytes(b"\0" * 64)
    wrapper = run_cli([python, "fine-tuning/run.py"], project)
    assert wrapper.returncode == 1
    assert "datasets/train.jsonl: training data not found; make it with `python datasets/prepare.py" in wrapper.stderr

