"""The README is a front door whose every snippet runs: each ``bash`` / ``python`` block is executed
against a live ``bentoml serve`` of the shipped model (the blocks' own URLs and ports pointed at
it), from a scratch folder that holds ``examples/``. A block that cannot run here (the set-up
commands themselves, real weights, a data set) carries ``<!-- not run: reason -->`` on the line
above it, and the test knows exactly which ones those are. Every relative link in the README and
docs/ resolves, anchors included."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")
# What a block must print (a regex per block, found by a phrase of the block).
EXPECT = {
    "curl -fsS": [
        r'"expression":\s*"the red triangle".*?"present":\s*true',
        r'"expression":\s*"the woman in uniform".*?"present":\s*false',
        r'"instances":\s*\[\][^\]]*"best_guess":\s*true|"best_guess":\s*true.*?"instances":\s*\[\]',
        r'"card":\s*\{',
    ],
    "SyncHTTPClient": [r"^the square at the left True \["],
    "GroundingStub": [r"^True \["],
    "Grounder.from_pretrained": [r"^True 0\.9\d \(\d"],
}


def blocks(text: str) -> list[dict]:
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = NOT_RUN.search(before)
        out.append(
            {
                "lang": m.group(1),
                "code": m.group(2),
                "line": text[: m.start()].count("\n") + 1,
                "not_run": skip.group(1) if skip else None,
            }
        )
    return out


def test_readme_is_a_short_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert text.index("make serve") < 800 and "make test" in text[:1000]  # the two commands, up front
    assert text.startswith("# dit-grounding\n\n![")  # a picture made by the project first
    runnable = [b for b in blocks(text) if b["lang"] in ("bash", "python")]
    skipped = sorted(b["not_run"] for b in runnable if b["not_run"])
    assert skipped == [
        "needs a local model folder and a data set",
        "needs real weights, a GPU and the network",
        "the set-up commands themselves (make test runs this suite)",
    ]
    assert len(runnable) - len(skipped) >= 5


def test_readme_code_blocks_run(demo_server, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    ran = 0
    for b in blocks(README.read_text()):
        if b["lang"] not in ("bash", "python") or b["not_run"]:
            continue
        code = (
            b["code"]
            .replace("http://127.0.0.1:3000", demo_server.url)
            .replace("127.0.0.1:3001", demo_server.grpc)
            .replace(".venv/bin/python", sys.executable)
        )
        where = f"README.md line {b['line']}"
        if b["lang"] == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        else:
            script = tmp_path / f"block_{b['line']}.py"
            script.write_text(code)
            cmd = [sys.executable, str(script)]
        p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, (
            f"{where} failed:\n{code}\n--- stdout\n{p.stdout[-2000:]}\n--- stderr\n{p.stderr[-3000:]}"
        )
        for phrase, patterns in EXPECT.items():
            if phrase in code:
                for pattern in patterns:
                    assert re.search(pattern, p.stdout, re.S | re.M), f"{where}: no {pattern!r} in\n{p.stdout[-2000:]}"
        ran += 1
    assert ran >= 5
    assert (tmp_path / "overlay.png").stat().st_size > 1000  # /render wrote the overlay
    assert (tmp_path / "out" / "result.json").is_file()  # the CLI's outputs


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces → hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = FENCE.sub("", page.read_text())
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md":
            headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", FENCE.sub("", dest.read_text()), re.M)}
            if anchor not in headings:
                bad.append(target)
    assert not bad, f"{page.name}: links that do not resolve: {bad}"
