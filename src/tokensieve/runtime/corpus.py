"""Natural prose available offline, with licences that allow using it.

- ``essays``: the bundled essays (original text, MIT-licensed with the code), about 2.5k tokens.
- ``pydoc``: the Python Language Reference topics that CPython ships in its standard library
  (``pydoc_data.topics``, PSF licence), about 110k tokens of English technical prose. Read at run time
  from the interpreter, never copied into the repository.
- ``licenses``: the licence texts Debian ships in ``/usr/share/common-licenses`` (verbatim copying is
  allowed), when that directory exists. Not in the default set, so results do not depend on the distro.

- ``python-docs``: the reStructuredText sources of Python's documentation that Debian's ``python3.11-doc`` installs
  (``/usr/share/doc/python3.11/html/_sources``; PSF licence), without ``reference/`` and ``library/``, which the
  ``pydoc`` topics are cut from. ``debian-reference``: the Debian Reference (``debian-reference-en``, GPL-2+),
  plain text. Both only where installed (``apt-get install python3.11-doc debian-reference-en``); the learned KV
  scorers train on them, never on the default sources the benchmark's haystacks are made of.

The text of ``pydoc`` depends on the Python version; ``fingerprint()`` identifies what a run used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path

DEFAULT_SOURCES = ("essays", "pydoc")
LICENSES_DIR = Path("/usr/share/common-licenses")


@cache
def paragraphs() -> tuple[str, ...]:
    text = files("tokensieve").joinpath("data/essays.txt").read_text(encoding="utf-8")
    return tuple(p.strip() for p in text.split("\n\n") if len(p.split()) > 12)


def _essays() -> list[str]:
    text = files("tokensieve").joinpath("data/essays.txt").read_text(encoding="utf-8")
    return [text.strip()]


def _pydoc() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k].strip() for k in sorted(topics)]


def _licenses() -> list[str]:
    if not LICENSES_DIR.is_dir():
        raise FileNotFoundError(f"{LICENSES_DIR} does not exist on this machine: use the sources essays,pydoc")
    seen, out = set(), []
    for path in sorted(LICENSES_DIR.iterdir()):
        real = path.resolve()  # GPL -> GPL-3 and similar links: each text once
        if real.is_file() and real not in seen:
            seen.add(real)
            out.append(real.read_text(encoding="utf-8", errors="replace").strip())
    return out


PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
DEBIAN_REFERENCE = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")


# the Debian package behind each installed source: a missing one is named with every other missing one at once
DEBIAN_PACKAGES = {
    "python-docs": (PYTHON_DOCS_DIR, "python3.11-doc"),
    "debian-reference": (DEBIAN_REFERENCE, "debian-reference-en"),
}


def _python_docs() -> list[str]:
    skip = {"reference", "library"}  # pydoc_data.topics is cut from these
    paths = sorted(p for p in PYTHON_DOCS_DIR.rglob("*.txt") if p.relative_to(PYTHON_DOCS_DIR).parts[0] not in skip)
    return [p.read_text(encoding="utf-8", errors="replace").strip() for p in paths]


def _debian_reference() -> list[str]:
    import gzip

    return [gzip.decompress(DEBIAN_REFERENCE.read_bytes()).decode("utf-8", errors="replace").strip()]


SOURCES = {
    "essays": _essays,
    "pydoc": _pydoc,
    "licenses": _licenses,
    "python-docs": _python_docs,
    "debian-reference": _debian_reference,
}


@cache
def documents(sources: Sequence[str] = DEFAULT_SOURCES) -> tuple[str, ...]:
    """Whole documents from ``sources``, in a fixed order."""
    for name in sources:
        if name not in SOURCES:
            raise ValueError(f"unknown corpus source {name!r}; choose from {', '.join(SOURCES)}")
    missing = [DEBIAN_PACKAGES[n] for n in sources if n in DEBIAN_PACKAGES and not DEBIAN_PACKAGES[n][0].exists()]
    if missing:
        paths = ", ".join(str(path) for path, _ in missing)
        raise FileNotFoundError(f"{paths} not found: apt-get install {' '.join(pkg for _, pkg in missing)}")
    out: list[str] = []
    for name in sources:
        out.extend(SOURCES[name]())
    return tuple(out)


@cache
def prose_paragraphs(sources: Sequence[str] = DEFAULT_SOURCES) -> tuple[str, ...]:
    """Paragraphs of running prose (line wraps undone; headings, rules and short code lines dropped)."""
    out = []
    for doc in documents(tuple(sources)):
        for block in doc.split("\n\n"):
            text = " ".join(block.split())
            if len(text.split()) >= 12 and not set(text) <= set("*=-~ ") and text[-1] in ".:;)\"'":
                out.append(text)
    return tuple(out)


def fingerprint(sources: Sequence[str] = DEFAULT_SOURCES) -> str:
    """A short hash of the corpus text, recorded with results (``pydoc`` follows the Python version)."""
    h = hashlib.sha256()
    for doc in documents(tuple(sources)):
        h.update(doc.encode())
    return h.hexdigest()[:12]
