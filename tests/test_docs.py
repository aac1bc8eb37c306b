"""Code comments point to BENCHMARKS.md sections for their figures: every such pointer names a heading."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmarks_pointer_in_the_code_names_a_section():
    headings = [h.strip() for h in re.findall(r"^#+ (.+)$", (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8"),
                                              flags=re.M)]
    pointers = []
    for path in [*ROOT.glob("pipeline/*.py"), *ROOT.glob("model/*.py"), ROOT / "cli.py"]:
        text = re.sub(r"\s*\n\s*#?\s*", " ", path.read_text(encoding="utf-8"))   # pointers cut across lines
        pointers += [(path.name, p) for p in re.findall(r'BENCHMARKS\.md[,:;]? "([^"]+)"', text)]
    assert len(pointers) >= 10
    missing = [(f, p) for f, p in pointers if not any(h.startswith(p) for h in headings)]
    assert missing == []
