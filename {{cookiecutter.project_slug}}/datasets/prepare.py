"""Turn your data into the train and eval files the Olive config reads, and say exactly what is wrong with it.

    python datasets/prepare.py [SOURCE] [--question-column Q] [--answer-column A] [--preview N] [--check]

SOURCE is a CSV/TSV (quoted commas and newlines are fine), a JSON list, JSONL, Parquet, or a folder saved
with datasets' save_to_disk; default datasets/sample.csv. Rows are question/answer columns, or chat rows
({"messages": [{"role", "content"}, ...]} or ShareGPT {"conversations": [{"from", "value"}, ...]}), which are
rendered with the model's chat format. Bad rows are dropped and counted, with their line numbers. The rows
kept are split (fixed seed and eval share) into the files named in fine-tuning/olive-config.json.

The source file is never modified; an existing output with different rows is kept unless --force; outputs
are replaced atomically, so an interrupted run leaves the old files whole.
"""

import argparse
import hashlib
import json
import math
import os
import string
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "setup"))
import project  # noqa: E402
import sources  # noqa: E402

DEFAULT_SOURCE = HERE / "sample.csv"
EVAL_SHARE = 0.1
SEED = 42
# Without the model's tokenizer, a conservative estimate for English text (BPE averages about 4 characters)
CHARS_PER_TOKEN = 3.5
ROLE_NAMES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
SHOWN_LOCATIONS = 5


class PrepareError(RuntimeError):
    """Nothing usable can be written; the message says what to do."""


class Layout:
    """What training reads: the text template, its two fields, the length limit and the two output files."""

    def __init__(self, facts: dict, config: dict):
        try:
            self._read(facts, config)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            # a hand-edited data config: a stray brace in text_template, a max_seq_len of "2k", a missing name
            raise PrepareError(
                f"its data_configs cannot be read ({type(error).__name__}: {error}); "
                "`python fine-tuning/check_config.py` says more"
            ) from None

    def _read(self, facts: dict, config: dict) -> None:
        data = {d["name"]: d for d in config.get("data_configs", [])}
        chat = facts["chat_format"]
        q, a = facts["question_column"], facts["answer_column"]
        # a project that does not train has no data config: the same format as inference then
        default_template = project.prompt_text("{" + q + "}", facts) + "{" + a + "}" + chat["end"].rstrip()
        pre = data.get("train_data", {}).get("pre_process_data_config", {})
        self.template = pre.get("text_template", default_template)
        # Olive's default wraps every sample as "<bos> text <eos>"; the generated config turns that off
        self.special_tokens = bool(data) and pre.get("add_special_tokens", True)
        fields = [name for _, name, _, _ in string.Formatter().parse(self.template) if name]
        if len(fields) != 2:
            raise PrepareError(f"text_template must use two fields, has {fields}")
        self.question, self.answer = fields
        self.max_seq_len = int(pre.get("max_seq_len", facts["max_seq_len"]))
        self.chat = chat

        def file_of(name: str, default: str) -> Path:
            files = data.get(name, {}).get("load_dataset_config", {}).get("data_files", default)
            return project.ROOT / (files if isinstance(files, str) else files[0])

        self.train_file = file_of("train_data", "datasets/train.jsonl")
        self.eval_file = file_of("eval_data", "datasets/eval.jsonl")

    def prompt(self, row: dict) -> str:
        head = self.template.split("{" + self.answer + "}")[0]
        return head.format(**row)

    def text(self, row: dict) -> str:
        return self.template.format(**row)


class TokenizerUnusable(Exception):
    """The folder holds no tokenizer that can count. The message says what is missing or broken; fix, when
    set, is the remedy wherever the folder came from (otherwise the caller knows it)."""

    def __init__(self, reason: str, fix: str | None = None):
        super().__init__(reason)
        self.fix = fix


# Any ordinary text: a tokenizer that turns it into nothing has no vocabulary
PROBE_TEXT = "How do I reset the inverter after a power cut?"


def load_tokenizer(folder: Path):
    """The folder's tokenizer as Olive loads it (transformers), or TokenizerUnusable."""
    if not folder.is_dir():
        raise TokenizerUnusable("not a folder" if folder.exists() else "no such folder")
    has_json = (folder / "tokenizer.json").is_file()
    # a download cut short would count every sample as 0 tokens and the max_seq_len check would pass everything
    missing = project.tokenizer_missing(folder)
    if missing:
        raise TokenizerUnusable(missing)
    try:
        import transformers
    except ImportError:
        raise TokenizerUnusable(
            "transformers is not installed", fix="python -m pip install -r setup/requirements.txt"
        ) from None
    try:
        if has_json and not (folder / "tokenizer_config.json").is_file():
            # AutoTokenizer needs a config to pick the class; tokenizer.json alone is a complete fast tokenizer
            tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        probe = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    except Exception as error:  # a broken file surfaces as JSON, OS, value or key errors from deep inside
        detail = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
        raise TokenizerUnusable(f"cannot load its tokenizer ({type(error).__name__}: {detail})") from None
    if not probe:
        raise TokenizerUnusable("its tokenizer encodes text to 0 tokens (an empty vocabulary)")
    return tokenizer


class TokenCounter:
    """Exact counts with the base model's tokenizer, loaded as Olive loads it (transformers), when it is
    complete in model-cache/ or given with --tokenizer; an announced estimate otherwise."""

    def __init__(self, tokenizer_dir: Path, explicit: bool = False):
        """explicit: the user named the folder, so an unusable one is their error (TokenizerUnusable) rather
        than a fallback they might not notice."""
        self.tokenizer = None
        estimate = f"estimated at {CHARS_PER_TOKEN} characters per token"
        self.source = f"{estimate} (the model's tokenizer counts exactly)"
        if not explicit and not tokenizer_dir.exists():
            return  # the base model is not downloaded yet
        try:
            self.tokenizer = load_tokenizer(tokenizer_dir)
        except TokenizerUnusable as error:
            if explicit:
                raise
            fix = error.fix or "download incomplete? python model-cache/download.py"
            self.source = f"{estimate} ({project.shown(tokenizer_dir)}: {error}; {fix})"
            return
        self.source = f"counted with the tokenizer in {project.shown(tokenizer_dir)}"
        if not (tokenizer_dir / "tokenizer_config.json").is_file():
            # the config picks the tokenizer class, and transformers' Llama class adds no word-start marker
            # after special tokens where tokenizer.json alone does
            self.source += " (tokenizer.json alone: without its tokenizer_config.json a few tokens may differ)"

    def _encode(self, text: str, offsets: bool = False):
        # Olive tokenizes the filled-in template without special tokens; its own <bos>/<eos> (add_special_tokens)
        # are counted by the caller
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN)
        return len(self._encode(text)["input_ids"])

    def cut(self, text: str, tokens: int) -> str:
        """The longest prefix of text with at most `tokens` tokens."""
        if tokens <= 0:
            return ""
        if self.tokenizer is None:
            return text[: int(tokens * CHARS_PER_TOKEN)]
        offsets = self._encode(text, offsets=True)["offset_mapping"]
        return text if tokens >= len(offsets) else text[: offsets[tokens - 1][1]]


def refuse_control_tokens(text: str, chat: dict) -> None:
    token = next((t for t in project.chat_tokens(chat) if t and t in text), None)
    if token:
        raise ValueError(f"text contains the chat token {token} (it would end the turn early)")


def chat_pair(turns: list, shape: str, chat: dict) -> tuple[str, str]:
    """Render a conversation as (question, answer): the answer is the last assistant turn, the question
    everything before it, with the chat tokens in between, so the template reproduces the whole dialogue."""
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise ValueError(f"{shape} entry is not an object")
        role_key, text_key = ("role", "content") if shape == "messages" else ("from", "value")
        role = ROLE_NAMES.get(str(turn.get(role_key, "")).lower())
        text = turn.get(text_key)
        if role is None:
            raise ValueError(f"unknown role {turn.get(role_key)!r} (use user, assistant or system)")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty {role} turn")
        refuse_control_tokens(text, chat)
        messages.append((role, text.strip()))
    system = [text for role, text in messages if role == "system"]
    dialogue = [(role, text) for role, text in messages if role != "system"]
    if len(dialogue) < 2 or dialogue[-1][0] != "assistant":
        raise ValueError("conversation must end with an assistant turn after a user turn")
    expected = ["user", "assistant"] * len(dialogue)
    if [role for role, _ in dialogue] != expected[: len(dialogue)]:
        raise ValueError("turns must alternate user, assistant, starting with user")
    if system:  # the text template starts at the user turn, so a system message leads that turn
        dialogue[0] = ("user", "\n\n".join(system + [dialogue[0][1]]))
    parts = [dialogue[0][1]]
    for role, text in dialogue[1:-1]:
        parts.append(chat["end"] + (chat["assistant"] if role == "assistant" else chat["user"]) + text)
    return "".join(parts), dialogue[-1][1]


def to_pair(record: dict, question_col: str, answer_col: str, chat: dict) -> tuple[str, str]:
    """(question, answer) of one record, or ValueError saying why the row cannot be used."""
    if "__error__" in record:
        raise ValueError(record["__error__"])
    for shape in ("messages", "conversations"):
        if question_col not in record and isinstance(record.get(shape), list):
            return chat_pair(record[shape], shape, chat)
    values = []
    for column in (question_col, answer_col):
        if column not in record:
            raise ValueError(f"no {column!r} column")
        value = record[column]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"empty {column!r}")
        if not isinstance(value, str):
            raise ValueError(f"{column!r} is not text ({type(value).__name__})")
        refuse_control_tokens(value, chat)
        values.append(value.replace("\r\n", "\n").strip())
    return values[0], values[1]


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


class Report:
    def __init__(self):
        self.read = 0
        self.dropped: dict[str, list[str]] = {}
        self.truncated: list[str] = []

    def drop(self, reason: str, where: str) -> None:
        self.dropped.setdefault(reason, []).append(where)

    @staticmethod
    def _places(wheres: list[str]) -> str:
        shown = ", ".join(wheres[:SHOWN_LOCATIONS])
        return shown + (f", ... {len(wheres) - SHOWN_LOCATIONS} more" if len(wheres) > SHOWN_LOCATIONS else "")

    def lines(self) -> list[str]:
        out = []
        total = sum(len(w) for w in self.dropped.values())
        if total:
            out.append(f"Dropped {total}:")
            for reason, wheres in sorted(self.dropped.items(), key=lambda item: -len(item[1])):
                out.append(f"  {len(wheres):>5}  {reason} ({self._places(wheres)})")
        if self.truncated:
            out.append(f"Truncated {counted(len(self.truncated), 'answer')} to fit ({self._places(self.truncated)})")
        return out


def columns_seen(rows: list[tuple[str, dict]]) -> list[str]:
    seen: dict[str, None] = {}
    for _, record in rows[:1000]:
        seen.update((key, None) for key in record if key != "__error__")
    return list(seen)


def collect(rows, layout: Layout, counter: TokenCounter, question_col: str, answer_col: str, over: str, report):
    """The usable rows, each as (where, output row, token count); every other row is counted in report."""
    names = columns_seen(rows)
    is_chat = {"messages", "conversations"} & set(names)
    missing = [c for c in (question_col, answer_col) if c not in names]
    if missing and not is_chat and rows:
        have = ", ".join(repr(n) for n in names) or "none"
        flag = "--question-column" if question_col in missing else "--answer-column"
        raise PrepareError(f"no column {missing[0]!r}; the file has {have}: pass {flag} with the right one")
    header = (question_col.strip().lower(), answer_col.strip().lower())
    seen: dict[tuple[str, str], str] = {}
    kept = []
    for where, record in rows:
        report.read += 1
        try:
            question, answer = to_pair(record, question_col, answer_col, layout.chat)
        except ValueError as error:
            report.drop(str(error), where)
            continue
        if (question.lower(), answer.lower()) == header:
            report.drop("header row repeated as data", where)
            continue
        if (question, answer) in seen:
            report.drop("duplicate of an earlier row", where)
            continue
        seen[(question, answer)] = where
        row = {layout.question: question, layout.answer: answer}
        tokens = count(counter, layout, row)
        if tokens > layout.max_seq_len:
            if over == "drop":
                report.drop(f"longer than max_seq_len {layout.max_seq_len} tokens", where)
                continue
            row, tokens = truncate(row, layout, counter)
            if row is None:
                report.drop(f"prompt alone is longer than max_seq_len {layout.max_seq_len} tokens", where)
                continue
            report.truncated.append(where)
        kept.append((where, row, tokens))
    return kept


def count(counter: TokenCounter, layout: Layout, row: dict) -> int:
    return counter.count(layout.text(row)) + (2 if layout.special_tokens else 0)


def truncate(row: dict, layout: Layout, counter: TokenCounter):
    """Shorten the answer so the whole sample fits; the template's closing tokens stay."""
    fixed = count(counter, layout, {**row, layout.answer: ""})
    budget = layout.max_seq_len - fixed
    for _ in range(8):  # tokens can merge across the cut: shrink until it fits
        if budget <= 0:
            return None, 0
        answer = counter.cut(row[layout.answer], budget).rstrip()
        candidate = {**row, layout.answer: answer}
        tokens = count(counter, layout, candidate)
        if tokens <= layout.max_seq_len and answer:
            return candidate, tokens
        budget -= max(1, tokens - layout.max_seq_len)
    return None, 0


def split(kept: list, share: float, seed: int, question: str) -> tuple[list, list]:
    """Rows go to eval by a hash of their question: the same data always gives the same files, adding rows
    moves few others, and rows that ask the same question stay on one side (no train/eval leak)."""
    if len(kept) < 2:
        raise PrepareError(
            f"{counted(len(kept), 'usable row')}; training needs at least 2 (one to train, one to evaluate)"
        )
    n_eval = min(len(kept) - 1, max(1, round(len(kept) * share)))
    groups: dict[str, list[int]] = {}
    for index, (_, row, _) in enumerate(kept):
        groups.setdefault(" ".join(row[question].lower().split()), []).append(index)
    if len(groups) < 2:
        raise PrepareError("every usable row asks the same question; evaluation needs rows with other questions")

    def rank(text: str) -> str:
        return hashlib.sha256(f"{seed}\0{text}".encode()).hexdigest()

    eval_ids: set[int] = set()
    for text in sorted(groups, key=rank):
        if len(eval_ids) >= n_eval or len(eval_ids) + len(groups[text]) >= len(kept):
            break
        eval_ids.update(groups[text])
    train = [kept[i] for i in range(len(kept)) if i not in eval_ids]
    evaluation = [kept[i] for i in range(len(kept)) if i in eval_ids]
    return train, evaluation


def jsonl(rows: list) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for _, row, _ in rows)


def write_outputs(contents: dict[Path, str], force: bool) -> list[str]:
    """Write every file or none: all are staged beside their target, then renamed into place."""
    changed = [path for path, text in contents.items() if not path.is_file() or path.read_text("utf-8") != text]
    different = [path for path in changed if path.is_file()]
    if different and not force:
        names = ", ".join(project.shown(path) for path in different)
        raise PrepareError(f"{names} already holds different rows; pass --force to replace it")
    staged = {}
    try:
        for path in changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged[path] = temp
            # mkstemp makes the file private (0600); the training data keeps the target's or the usual mode
            os.chmod(temp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
            with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
                out.write(contents[path])
                out.flush()
                os.fsync(out.fileno())
        for path, temp in staged.items():
            os.replace(temp, path)
    finally:
        for temp in staged.values():
            if os.path.exists(temp):
                os.unlink(temp)
    return [project.shown(path) for path in changed]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def percentile(values: list[int], share: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def preview(rows: list, layout: Layout, count: int) -> None:
    """Print samples exactly as Olive builds them: the config's text_template filled in."""
    print(
        "\nSamples as training sees them. [prompt] and [answer] mark the parts; Olive's line-by-line "
        "strategy computes the loss on both."
    )
    if layout.special_tokens:
        print("Olive also wraps each one as '<bos> sample <eos>' (add_special_tokens in the Olive config).")
    for number, (where, row, tokens) in enumerate(rows[:count], start=1):
        prompt, text = layout.prompt(row), layout.text(row)
        print(f"\n--- sample {number} ({where} of the source, {tokens} tokens) ---")
        print("[prompt]")
        print(prompt, end="" if prompt.endswith("\n") else "\n")
        print("[answer]")
        print(text[len(prompt) :])


def summarise(report: Report, kept: list, counter: TokenCounter, layout: Layout, source: str) -> None:
    print(f"Read {counted(report.read, 'row')} from {source}; kept {len(kept)}")
    for line in report.lines():
        print(line)
    lengths = [tokens for _, _, tokens in kept]
    if lengths:
        print(
            f"Tokens per sample, {counter.source}: p50 {percentile(lengths, 0.5)}, p90 {percentile(lengths, 0.9)}, "
            f"p99 {percentile(lengths, 0.99)}, max {max(lengths)}; limit max_seq_len {layout.max_seq_len}"
        )


def parse_args(argv, facts: dict):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE, help="data file or folder")
    parser.add_argument("--question-column", default=facts["question_column"], help="column with the prompt")
    parser.add_argument("--answer-column", default=facts["answer_column"], help="column with the answer")
    parser.add_argument("--format", default="auto", choices=["auto", *sources.FORMATS], help="default: by suffix")
    parser.add_argument("--encoding", default="utf-8-sig", help="text encoding of CSV/TSV/JSON files")
    parser.add_argument(
        "--delimiter",
        help="CSV separator, one character, '\\t' for a tab (default: ',' or what the header line uses, e.g. ';')",
    )
    parser.add_argument("--split", default="train", help="split to read from a datasets folder")
    parser.add_argument("--eval-share", type=float, default=EVAL_SHARE, help="share of rows for evaluation")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the train/eval split")
    parser.add_argument(
        "--over-length",
        choices=["drop", "truncate"],
        default="drop",
        help="rows longer than max_seq_len: drop them (default) or cut the answer to fit",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="folder with the model's tokenizer.json, and its tokenizer_config.json if it has one "
        "(default: the base model in model-cache/ once downloaded, else an estimate)",
    )
    parser.add_argument("--preview", type=int, metavar="N", help="print N samples as training sees them; write nothing")
    parser.add_argument("--check", action="store_true", help="validate and summarise; write nothing")
    parser.add_argument("--force", action="store_true", help="replace outputs that hold different rows")
    args = parser.parse_args(argv)
    if not 0 < args.eval_share < 1:
        parser.error("--eval-share must be between 0 and 1")
    if args.preview is not None and args.preview < 1:
        parser.error("--preview needs a number of samples >= 1")
    if args.delimiter is not None:
        # a shell passes '\t' as backslash and t: the error message offers that spelling, so it means a tab
        args.delimiter = "\t" if args.delimiter == "\\t" else args.delimiter
        # a quote or line break cannot separate fields: the csv reader would misread every row
        if len(args.delimiter) != 1 or args.delimiter in '"\r\n':
            parser.error("--delimiter is one character other than a quote or line break, e.g. ';' or '\\t'")
    args.question_column, args.answer_column = args.question_column.strip(), args.answer_column.strip()
    return args


def main(argv=None) -> int:
    facts = project.load()
    args = parse_args(argv, facts)
    try:
        layout = Layout(facts, project.load_config())
    except project.ConfigError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    except PrepareError as error:
        print(f"ERROR: {project.shown(project.OLIVE_CONFIG)}: {error}; regenerate or fix the config", file=sys.stderr)
        return 1
    try:
        counter = TokenCounter(args.tokenizer or project.ROOT / facts["model_dir"], explicit=args.tokenizer is not None)
    except TokenizerUnusable as error:
        fix = error.fix or "pass the folder that holds the model's tokenizer.json"
        print(f"ERROR: --tokenizer: {project.shown(args.tokenizer)}: {error}; {fix}", file=sys.stderr)
        return 1
    try:
        source = args.source.resolve()
        if source in (layout.train_file.resolve(), layout.eval_file.resolve()):
            raise PrepareError("this is an output of this script; pass your original data file")
        fmt, rows = sources.read(source, args.format, args.encoding, args.split, args.delimiter)
        report = Report()
        kept = collect(rows, layout, counter, args.question_column, args.answer_column, args.over_length, report)
        summarise(report, kept, counter, layout, f"{project.shown(source)} ({fmt})")
        train, evaluation = split(kept, args.eval_share, args.seed, layout.question)
    except (sources.SourceError, PrepareError) as error:
        print(f"ERROR: {project.shown(args.source)}: {error}", file=sys.stderr)
        return 1
    if args.preview is not None:
        preview(train, layout, args.preview)
        return 0
    if args.check:
        print(f"Check only: would write {len(train)} train and {counted(len(evaluation), 'eval row')}")
        return 0
    outputs = {layout.train_file: jsonl(train), layout.eval_file: jsonl(evaluation)}
    try:
        written = write_outputs(outputs, args.force)
    except PrepareError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(
            f"ERROR: {project.shown(Path(error.filename or layout.train_file))}: cannot write it ({error.strerror})",
            file=sys.stderr,
        )
        return 1
    state = "written" if written else "unchanged"
    print(
        f"Train {counted(len(train), 'row')} -> {project.shown(layout.train_file)}, "
        f"eval {counted(len(evaluation), 'row')} -> {project.shown(layout.eval_file)} "
        f"({state}; split seed {args.seed}, eval share {args.eval_share:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
