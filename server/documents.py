"""Context files for `ledserve ask`: plain text, Markdown, or PDF (text extracted with pypdf)."""

from pathlib import Path

SUFFIXES = (".txt", ".md", ".pdf")


def read_document(path: Path) -> str:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type; give a {', '.join(SUFFIXES)} file")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix.lower() != ".pdf":
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except PdfReadError as e:
        raise ValueError(f"{path}: not a readable PDF ({e})") from e
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise ValueError(f"{path}: no text could be extracted (a scanned PDF needs OCR first)")
    return text
