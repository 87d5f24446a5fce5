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
SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


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
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SourceError(f"cannot read it ({error.strerror}); check the path and its permissions") from None
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


def pick_delimiter(first_line: str, default: str) -> str:
    """Excel writes ';' where ',' is the decimal mark: a one-field header that splits on another separator
    means the file uses that one."""
    if default in first_line:
        return default
    for candidate in (";", "\t", "|", ","):
        if candidate != default and candidate in first_line:
            return candidate
    return default


def read_delimited(path: Path, encoding: str, delimiter: str | None, default: str) -> Iterator[tuple[str, dict]]:
    text = decode(path, encoding)
    offset = 0
    if text.lower().startswith("sep=") and "\n" in text:  # Excel's "sep=;" line names the separator
        first, text = text.split("\n", 1)
        delimiter, offset = delimiter or first[4:5], 1
    delimiter = delimiter or pick_delimiter(text.split("\n", 1)[0], default)
    # Answers can be long documents; the csv module's default cap is 128 KiB per field
    csv.field_size_limit(2**31 - 1)
    # newline="" semantics: the csv module handles quoted commas and newlines inside a field;
    # strict: an unclosed quote is an error, not rows silently merged into one answer
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows = []
    start = 1
    try:
        header = next(reader, None)
        if not header:
            raise SourceError("empty file; the first line must name the columns")
        header = [name.strip() for name in header]
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            places = ", ".join(str(i + 1) for i, name in enumerate(header) if name == repeated[0])
            raise SourceError(f"column {repeated[0]!r} appears more than once (columns {places}); rename one")
        start = reader.line_num + 1
        for values in reader:
            where = f"line {start + offset}"
            start = reader.line_num + 1
            if not any(value.strip() for value in values):
                continue  # blank line
            if len(values) != len(header):
                rows.append((where, {"__error__": f"{len(values)} fields where the header has {len(header)}"}))
                continue
            rows.append((where, dict(zip(header, values, strict=True))))
    except csv.Error as error:
        what = "a quote is never closed" if "end of data" in str(error) else str(error)
        where = f"the row starting at line {start + offset}"
        raise SourceError(f"{where} cannot be read: {what}; fix the quoting") from None
    return iter(rows)


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
    try:
        data = load_from_disk(str(path))
    except (OSError, ValueError) as error:
        raise SourceError(f"not a readable datasets folder ({error}); save it again with save_to_disk") from None
    if isinstance(data, DatasetDict):
        if split not in data:
            raise SourceError(f"no split {split!r}; it has {', '.join(data)}; pass --split")
        data = data[split]
    for number, record in enumerate(data, start=1):
        yield f"row {number}", record


def read(path: Path, fmt: str = "auto", encoding: str = "utf-8-sig", split: str = "train", delimiter=None):
    """Return (format, rows) for a data file; raises SourceError for a file that cannot be read at all."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt in ("csv", "tsv"):
        rows = read_delimited(path, encoding, delimiter, "," if fmt == "csv" else "\t")
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
