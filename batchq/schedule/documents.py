"""Documents in a folder, and their text: txt and md as they are, html through BeautifulSoup,
pdf through pypdf, docx through python-docx (pure Python, permissive licences). A document
that cannot be read fails alone, with its reason."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT = (".txt", ".md", ".markdown", ".text")
HTML = (".html", ".htm")
READABLE = (*TEXT, *HTML, ".pdf", ".docx")


class Unreadable(Exception):
    """Why a document's text cannot be had (corrupt, encrypted, empty, unknown kind)."""


@dataclass(frozen=True)
class Document:
    path: Path  # absolute
    relative: str  # to the source folder, with forward slashes
    content_hash: str  # sha256 of its bytes: what makes a run incremental

    @property
    def name(self) -> str:
        return self.path.name


def scan(folder: Path, glob: str) -> Iterator[Document]:
    """The files of the folder that match, in path order (hidden files and folders left out)."""
    for path in sorted(p for p in folder.glob(glob) if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        yield Document(path, relative, hashlib.sha256(path.read_bytes()).hexdigest())


def text_of(document: Document) -> str:
    """The document's text; raises Unreadable with a reason a person can act on."""
    suffix = document.path.suffix.lower()
    data = document.path.read_bytes()
    if suffix in TEXT:
        text = _decode(data)
    elif suffix in HTML:
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(_decode(data), "html.parser")
        for noise in soup(["script", "style", "noscript", "template"]):
            noise.decompose()
        text = soup.get_text("\n")
    elif suffix == ".pdf":
        text = _pdf(document.path)
    elif suffix == ".docx":
        text = _docx(document.path)
    else:
        raise Unreadable(f"{suffix or 'no extension'}: not a kind batchq reads "
                         f"({', '.join(READABLE)})")
    text = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").splitlines())
    text = _squeeze_blank_lines(text).strip()
    if not text:
        raise Unreadable("no text in it (empty, or a scan without a text layer)")
    return text


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text (byte {exc.start + 1})") from None


def _pdf(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise Unreadable("the PDF is encrypted")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except Unreadable:
        raise
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise Unreadable(f"not a readable PDF ({type(exc).__name__}: {exc})") from None


def _docx(path: Path) -> str:
    import zipfile

    from docx import Document as Docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        return "\n\n".join(p.text for p in Docx(str(path)).paragraphs)
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise Unreadable(f"not a readable Word document ({type(exc).__name__})") from None


def _squeeze_blank_lines(text: str) -> str:
    out: list[str] = []
    for line in text.split("\n"):
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out)


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]
