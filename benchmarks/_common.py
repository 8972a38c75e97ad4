"""What the benchmark scripts share: the command line that reruns a run, writing its rows and its table with their
provenance (command, commit, versions, machine: ``tokensieve.provenance``), the one-forward-per-token decode loop
and the long prose prompt (benchmarks only; run from the repository root).

Each experiment lives in ``benchmarks/<experiment>/`` and imports this file with::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import textwrap
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from tokensieve.compat import with_cache
from tokensieve.provenance import markdown, provenance

QUESTION = "Write a long essay that continues the text above, in the same style, with many new details."


def command(script: str, args: argparse.Namespace, env: str = "", positional: tuple[str, ...] = ()) -> str:
    """The command that reruns ``benchmarks/<script>`` (``<experiment>/<file>.py``) with ``args``: the
    ``positional`` arguments' values first, then every other one as an option, in the parser's order."""
    items = vars(args).items()
    bare = [shlex.quote(str(value)) for name, value in items if name in positional]
    options = []
    for name, value in items:
        flag = f"--{name.replace('_', '-')}"
        if name in positional or value is None or value is False:  # an unset option, an unset switch
            continue
        options.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return f"{env + ' ' if env else ''}.venv/bin/python benchmarks/{script} {' '.join(bare + options)}"


_PROVENANCE: dict[str | None, dict[str, Any]] = {}


def run_provenance(cmd: str | None = None) -> dict[str, Any]:
    """This run's provenance, measured once per command (every row of a run shares it)."""
    if cmd not in _PROVENANCE:
        _PROVENANCE[cmd] = provenance(cmd)
    return _PROVENANCE[cmd]


def stamp(row: dict[str, Any], cmd: str | None = None) -> dict[str, Any]:
    """``row`` with this run's ``provenance`` (a row that already carries one keeps it)."""
    return {**row, "provenance": row.get("provenance", run_provenance(cmd))}


def write_rows(path: Path, rows: list[dict[str, Any]], cmd: str | None = None) -> None:
    """One JSON row a line, each stamped with the run's provenance."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(stamp(r, cmd)) + "\n" for r in rows))


def write_table(path: Path, lines: list[str], cmd: str | None = None) -> None:
    """A Markdown table with the run's provenance (command, commit, versions, machine) at its foot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*lines, *markdown(run_provenance(cmd))]) + "\n")


def print_provenance(cmd: str | None = None) -> None:
    """For scripts whose table goes to stdout: the provenance lines at its foot."""
    print("\n".join(markdown(run_provenance(cmd))))


def write_results(out: Path, rows: list[dict[str, Any]] | None, lines: list[str], cmd: str | None = None) -> None:
    """``out.jsonl`` (one row a line, each with its ``provenance``; None: the caller wrote it) and the table
    ``out.md`` with the provenance at its foot, printed too. ``cmd``: the command that reruns it (default: this
    process's command line)."""
    if rows is not None:
        write_rows(out.with_suffix(".jsonl"), rows, cmd)
    write_table(out.with_suffix(".md"), lines, cmd)
    print(out.with_suffix(".md").read_text())


def step_loop(model, cache, first_logits: torch.Tensor, n: int, forced: list[int] | None) -> dict[str, Any]:
    """One forward per token from a prefilled cache; greedy, or teacher-forced on ``forced`` (every token is fed,
    the last one too). ``agree`` = steps whose argmax is the fed token, ``nll`` = mean NLL of the fed tokens."""
    tokens, times, agree, nll = [], [], 0, 0.0
    logits = first_logits
    with torch.inference_mode():
        for step in range(n):
            greedy = int(logits.argmax(-1))
            nxt = greedy if forced is None else forced[step]
            agree += greedy == nxt
            nll -= float(torch.log_softmax(logits.float(), -1).view(-1)[nxt])
            tokens.append(nxt)
            t0 = time.perf_counter()
            logits = model(torch.tensor([[nxt]]), **with_cache(model, cache)).logits[:, -1]
            times.append(time.perf_counter() - t0)
    return {"tokens": tokens, "times": times, "agree": agree / n, "nll": nll / n}


def continuation_ids(tok, n_tokens: int) -> torch.Tensor:
    """[1, ~n_tokens]: bundled essays (cycled) in the chat template, then the request to continue."""
    import tokensieve as ts
    from tokensieve.runtime.corpus import paragraphs

    fmt = ts.PromptFormat(tok)
    tail = fmt.question_ids(QUESTION)
    paras, text, i = paragraphs(), [], 0
    while len(tok.encode("\n\n".join(text))) < n_tokens:
        text.append(paras[i % len(paras)])
        i += 1
    body = tok.encode("\n\n".join(text))
    head = fmt.context_ids("")
    body = body[: max(1, n_tokens - len(tail) - len(head))]
    return torch.tensor([fmt.context_ids(tok.decode(body)) + tail])


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """A Markdown table's lines: the header, the rule, one line a row (cells through ``str``). ``align``: a letter
    a column, ``l`` (``---``) or ``r`` (``---:``); all left by default. A row of the wrong width is an error."""
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of l/r per column of {list(header)}")

    def line(cells: Sequence[Any]) -> str:
        if len(cells) != len(header):
            raise ValueError(f"a row of {len(cells)} cells under {len(header)} columns: {list(cells)}")
        return "| " + " | ".join(map(str, cells)) + " |"

    return [line(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align), *map(line, rows)]


def fill_block(text: str, name: str, lines: list[str]) -> str:
    """``text`` (a doc page) with the part between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
    replaced by ``lines``: how a script owns a table in a page (prose lines wrapped at 116 columns, tables and
    headings kept whole). A page without the block is an error, never a silent skip."""
    pat = re.compile(rf"(<!-- generated:{re.escape(name)} -->\n).*?(<!-- /generated:{re.escape(name)} -->)", re.S)
    if not pat.search(text):
        raise SystemExit(f"no block <!-- generated:{name} --> in the page")
    keep = ("|", "#", "    ")
    fill = textwrap.TextWrapper(116, break_long_words=False, break_on_hyphens=False).fill
    body = "\n".join(ln if ln.startswith(keep) else fill(ln) for ln in lines)
    return pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
