"""English prose for the byte-level GPT, offline: the Python standard library's own documentation.

Documents (each one unit of the train/val/test split):

- every topic of ``pydoc_data.topics`` (the language reference pages ``help()`` shows);
- every stdlib module's docstrings, collected with ``ast`` from its ``.py`` file (module, class and
  function docstrings, in source order), one document per module.

Cleaning: docstrings are dedented (``ast.get_docstring(clean=True)``), trailing spaces and runs of
blank lines removed, exact duplicate paragraphs dropped (``__init__`` docstrings repeated across
modules, boilerplate), and a document under ``MIN_CHARS`` left out. The split is by document and
deterministic: a document's split is decided by a hash of its name, not by the order files are
found, so one Python version always splits the same way.

User data (``--data``): a ``.txt``/``.md`` file (one document, split by paragraph blocks) or a folder
of them (one document per file). Text is UTF-8 (undecodable bytes are replaced).
"""
from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

MIN_CHARS = 200  # a document shorter than this (a one-line docstring module) is left out
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3", "ensurepip",
             "turtledemo", "config-3", "venv"}
TEXT_SUFFIXES = (".txt", ".md")
SEPARATOR = "\n\n"  # between documents when a split is one byte stream


@dataclass
class Document:
    name: str  # "topic:assert", "module:json.decoder", "file:notes.md"
    text: str


def _clean(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\t", "    ").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _module_docstrings(path: Path) -> list[str]:
    """The docstrings of a module's source, in order: module, then classes and functions (nested too)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append(doc)
    return out


def stdlib_documents(stdlib: Path | None = None) -> list[Document]:
    """pydoc topics and per-module docstrings of this Python's standard library, cleaned and
    deduplicated (by paragraph, first occurrence kept in name order)."""
    from pydoc_data.topics import topics

    raw: list[tuple[str, list[str]]] = [(f"topic:{name}", [text]) for name, text in sorted(topics.items())]
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS & set(rel.parts[:-1]) or rel.parts[0].startswith(("site-packages", "config-")):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        raw.append((f"module:{module}", _module_docstrings(path)))
    seen: set[str] = set()
    docs = []
    for name, texts in raw:
        paragraphs = []
        for text in texts:
            for para in _clean(text).split("\n\n"):
                key = para.strip()
                if key and key not in seen:
                    seen.add(key)
                    paragraphs.append(para)
        text = "\n\n".join(paragraphs)
        if len(text) >= MIN_CHARS:
            docs.append(Document(name, text))
    return docs


def user_documents(source: str | Path) -> list[Document]:
    """A text file (split into documents at runs of 3+ blank lines, else by ~4 kB blocks of
    paragraphs) or a folder of .txt/.md files (one document each)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise PipelineError(f"{path} holds no .txt or .md files")
        docs = [Document(f"file:{p.relative_to(path)}", _clean(_read(p))) for p in files]
    elif path.is_file():
        docs = [Document(f"{path.name}:{i}", block) for i, block in enumerate(_blocks(_clean(_read(path))))]
    else:
        raise PipelineError(f"--data {path}: no such file or folder")
    docs = [d for d in docs if d.text]
    if sum(len(d.text.encode()) for d in docs) < 2_000:
        raise PipelineError(f"{path} holds too little text to train on ({sum(len(d.text) for d in docs)} "
                            "characters); give at least a few kB")
    return docs


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise PipelineError(f"cannot read {path}: {e.strerror}") from None


def _blocks(text: str, size: int = 4096) -> list[str]:
    """One long text -> documents of about ``size`` characters, cut at paragraph boundaries."""
    out, current = [], ""
    for para in text.split("\n\n"):
        if current and len(current) + len(para) > size:
            out.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    return out + ([current] if current else [])


def split_of(name: str, fractions: tuple[float, float]) -> str:
    """"train", "val" or "test" for a document, from a hash of its name (stable across runs)."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    val, test = fractions
    return "test" if u < test else "val" if u < test + val else "train"


def split_documents(docs: list[Document], val: float, test: float) -> dict[str, list[Document]]:
    """Documents by split; every split gets at least one document (the largest ones are moved)."""
    out: dict[str, list[Document]] = {"train": [], "val": [], "test": []}
    for d in docs:
        out[split_of(d.name, (val, test))].append(d)
    for split in ("test", "val"):
        if not out[split] and len(out["train"]) > 1:
            out[split].append(out["train"].pop(-1))
    return out


def as_bytes(docs: list[Document]) -> bytes:
    """One split as the byte stream the model reads: documents joined by a blank line."""
    return SEPARATOR.join(d.text for d in docs).encode("utf-8")


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"
