"""The README's Python examples run as written: its ```python blocks are executed one after another
(one namespace, as a reader pasting them would) in a directory holding tiny runs at the paths they
name (runs/demo/text2img, runs/demo/clip, runs/prior, runs/tok; see tiny_runs.py)."""
from __future__ import annotations

import re
from pathlib import Path

from tiny_runs import make_runs

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_python_example_uses_the_pipeline():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 1 and "vqgen.Pipeline.from_pretrained(" in blocks[0]
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = 2\n"]


def test_the_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    make_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(python_blocks(README.read_text(encoding="utf-8"))):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102 - our own README
    # what the example promises
    result, sneakers, completed = namespace["result"], namespace["sneakers"], namespace["completed"]
    assert len(result.images) == 4 and result.scores == sorted(result.scores, reverse=True)
    assert Path("best.png").is_file() and Path("best4.png").is_file()
    assert sneakers.prompt == "Sneaker" and len(sneakers.images) == 8 and len(completed.images) == 4
    assert namespace["prior"].default_guidance == 2.0
    assert namespace["pictures"].shape[0] == 4 and namespace["tokens"].shape == namespace["grids"].shape
    assert "Ankle boot" in capsys.readouterr().out
