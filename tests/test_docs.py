"""Code comments point to the benchmark pages for their figures, and hold none themselves."""

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("model/*.py"), ROOT / "cli.py"]
POINTER = re.compile(r'((?:BENCHMARKS|benchmarks/history/[\w-]+)\.md)[,:;]? "([^"]+)"')
# A measured figure: a rate, a duration in ms, or "N x faster/slower".
FIGURE = re.compile(r"\d[\d,.]*\s*k?\s*(?:img/s|images/s|MB/s|GB/s|ms\b)|\d[\d,.]*\s*x\s+(?:faster|slower)", re.I)


def headings(page: Path) -> list[str]:
    return [h.strip() for h in re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.M)]


def test_every_benchmarks_pointer_in_the_code_names_a_section_of_its_page():
    pointers = []
    for path in [*CODE, ROOT / "README.md", *ROOT.glob("docs/*.md")]:
        text = re.sub(r"\s*\n\s*#?\s*", " ", path.read_text(encoding="utf-8"))   # pointers cut across lines
        pointers += [(path.name, page, title) for page, title in POINTER.findall(text)]
    assert len(pointers) >= 10
    missing = [p for p in pointers if not any(h.startswith(p[2]) for h in headings(ROOT / p[1]))]
    assert missing == []


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.string.startswith(('"""', "'''"))):
            found.append((tok.start[0], tok.string))
    return found


def test_no_measured_figure_stands_in_a_code_comment():
    figures = [(path.name, line, m.group(0)) for path in CODE for line, text in comments_and_docstrings(path)
               for m in FIGURE.finditer(text)]
    assert figures == []


def test_the_figure_rule_catches_what_it_is_for():
    assert [m.group(0) for m in FIGURE.finditer("# 411k img/s here; ~1 ms a message; 2.5x faster; 3 MB/s")] == \
        ["411k img/s", "1 ms", "2.5x faster", "3 MB/s"]
    assert FIGURE.search("# a zoom-in of 1.0-1.15x, batch 128, 64 px") is None


def test_the_benchmark_pages_stay_short_and_the_current_figures_terse():
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    table = text.split("## Current figures\n", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| area") and "---" not in r]
    assert len(rows) >= 15
    assert all(len(r.split("|")) == 7 and len(r.split("|")[2]) <= 90 for r in rows), rows
    assert (ROOT / "benchmarks" / "history").is_dir()


def test_every_command_line_in_the_docs_names_a_command_and_options_it_has():
    import cli

    lines = []
    for page in [ROOT / "README.md", *ROOT.glob("docs/*.md")]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            text = block.replace("\\\n", " ")
            lines += [(page.name, line.split("#")[0]) for line in text.splitlines() if "cli.py " in line]
    assert len(lines) >= 8
    for page, line in lines:
        words = line.split("cli.py ", 1)[1].split()
        command = cli.main.commands.get(words[0])
        assert command is not None, (page, line)
        options = {o for p in command.params for o in p.opts + p.secondary_opts}
        assert {w.split("=")[0] for w in words if w.startswith("--")} <= options, (page, line)
