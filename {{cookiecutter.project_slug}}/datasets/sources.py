"""Read the rows of a data file, whatever shape a company's export comes in.

Each reader yields (where, record): `where` says where the row is in the file ("line 7", "item 3") so every
message can point at it; `record` is a dict as the file holds it. Readers never modify the file.
CSV, TSV, JSON and JSONL need only the standard library; Parquet needs pyarrow and a Hugging Face
`datasets` folder needs the datasets package (both come with setup/requirements.txt).
"""

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "hf")
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".parquet": "parquet", ".pq": "parquet"}


class SourceError(ValueError):
    """The file as a whole cannot be read; the message says why and what to do."""


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf"
        raise SourceError("a folder, but not one saved by datasets' save_to_disk; pass a data file")
    if not path.is_file():
        raise SourceError("no such file; pass the path of your data file")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise SourceError(f"unknown file type {path.suffix!r}; pass --format one of {', '.join(FORMATS)}")
    return fmt


def decode(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        name = "UTF-8" if encoding.replace("_", "-").lower() in ("utf-8-sig", "utf-8", "utf8") else encoding
        bad = raw[error.start : error.start + 1].hex()
        raise SourceError(
            f"line {line} is not valid {name} (byte 0x{bad}); save the file as UTF-8, "
            "or pass --encoding with the file's encoding (for example cp1252 for Excel exports on Windows)"
        ) from None
    except LookupError:
        raise SourceError(f"unknown encoding {encoding!r}; pass a Python codec name") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_delimited(path: Path, encoding: str, delimiter: str) -> Iterator[tuple[str, dict]]:
    # newline="" semantics: the csv module handles quoted commas and newlines inside a field
    reader = csv.reader(io.StringIO(decode(path, encoding), newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise SourceError("empty file; the first line must name the columns")
    header = [name.strip() for name in header]
    start = reader.line_num + 1
    for values in reader:
        where = f"line {start}"
        start = reader.line_num + 1
        if not any(value.strip() for value in values):
            continue  # blank line
        if len(values) != len(header):
            yield where, {"__error__": f"{len(values)} fields where the header has {len(header)}"}
            continue
        yield where, dict(zip(header, values, strict=True))


def read_json(path: Path, encoding: str) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(decode(path, encoding))
    except json.JSONDecodeError as error:
        raise SourceError(f"not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        raise SourceError(
            "a JSON object, expected a list of rows"
            + (f"; the rows may be under {lists[0]!r}: save that list alone, or use JSONL" if lists else "")
        )
    if not isinstance(data, list):
        raise SourceError(f"expected a JSON list of rows, found {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        yield f"item {number}", record if isinstance(record, dict) else {"__error__": "not a JSON object"}


def read_jsonl(path: Path, encoding: str) -> Iterator[tuple[str, dict]]:
    for number, line in enumerate(decode(path, encoding).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield f"line {number}", {"__error__": f"not valid JSON ({error.msg})"}
            continue
        yield f"line {number}", record if isinstance(record, dict) else {"__error__": "not a JSON object"}


def read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError("reading Parquet needs pyarrow: python -m pip install -r setup/requirements.txt") from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise SourceError(f"not a readable Parquet file ({error})") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", record


def read_hf_folder(path: Path, split: str) -> Iterator[tuple[str, dict]]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise SourceError("reading a datasets folder needs datasets: pip install -r setup/requirements.txt") from None
    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if split not in data:
            raise SourceError(f"no split {split!r}; it has {', '.join(data)}; pass --split")
        data = data[split]
    for number, record in enumerate(data, start=1):
        yield f"row {number}", record


def read(path: Path, fmt: str = "auto", encoding: str = "utf-8-sig", split: str = "train"):
    """Return (format, rows) for a data file; raises SourceError for a file that cannot be read at all."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt in ("csv", "tsv"):
        rows = read_delimited(path, encoding, "," if fmt == "csv" else "\t")
    elif fmt == "json":
        rows = read_json(path, encoding)
    elif fmt == "jsonl":
        rows = read_jsonl(path, encoding)
    elif fmt == "parquet":
        rows = read_parquet(path)
    elif fmt == "hf":
        rows = read_hf_folder(path, split)
    else:
        raise SourceError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt, list(rows)
