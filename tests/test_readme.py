"""The README's ```python examples run as written, so the README stays true; and every link in
the README and docs/ to a file or heading of the project reaches one.

Every block runs, in order and in one namespace, in a temporary working directory that
holds what the examples name: a trained-model run directory ``runs/demo``, a mesh in
``my_scans/`` and a small h5 dataset at ``datasets/modelnet40_ply_hdf5_2048`` (with the
ModelNet10 class names, so that the ModelNet10 example finds its classes).
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import pcea
from pcea.data import MODELNET10_CLASSES

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)
TINY = {"num_points": 128, "centers": (64, 32), "neighbors": (8, 8), "embed_dim": 16, "stage_dims": (32, 64),
        "fuse_dim": 128, "head_dims": (64, 32), "memory": 16}


def _write_fixtures(root: Path) -> None:
    torch.manual_seed(0)
    model = pcea.build_model("pcea", num_classes=len(MODELNET10_CLASSES), **TINY)
    (root / "runs" / "demo").mkdir(parents=True)
    model.class_names = list(MODELNET10_CLASSES)
    pcea.save_classifier(root / "runs" / "demo" / "best.pt", model)

    (root / "my_scans").mkdir()
    corners = [(x, y, z) for x in (0, 1) for y in (0, 2) for z in (0, 1)]
    faces = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
             (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
    (root / "my_scans" / "chair.off").write_text(
        "OFF\n8 12 0\n" + "".join(f"{x} {y} {z}\n" for x, y, z in corners)
        + "".join(f"3 {a} {b} {c}\n" for a, b, c in faces))

    h5_root = root / "datasets" / "modelnet40_ply_hdf5_2048"
    h5_root.mkdir(parents=True)
    (h5_root / "shape_names.txt").write_text("\n".join(MODELNET10_CLASSES) + "\n")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        clouds = rng.normal(size=(len(MODELNET10_CLASSES), 1024, 3)).astype(np.float32)
        with h5py.File(h5_root / f"ply_data_{split}0.h5", "w") as h5:
            h5["data"] = clouds
            h5["label"] = np.arange(len(MODELNET10_CLASSES), dtype=np.uint8)[:, None]
            h5["normal"] = np.zeros_like(clouds)
        (h5_root / f"{split}_files.txt").write_text(f"data/modelnet40_ply_hdf5_2048/ply_data_{split}0.h5\n")


def test_readme_has_the_library_examples():
    text = "\n".join(BLOCKS)
    for call in ("pcea.build_model(", "pcea.load_model(", "pcea.classify(", "model.predict("):
        assert call in text, f"README.md has no python example using {call}"


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    _write_fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for number, code in enumerate(BLOCKS, start=1):
        try:
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        except Exception as err:
            pytest.fail(f"README.md python block {number} fails: {type(err).__name__}: {err}\n{code}")
    printed = capsys.readouterr().out
    assert "my_scans/chair.off" in printed and "error" not in printed


DOCS = [README, *sorted((README.parent / "docs").glob("*.md"))]


def _heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation but ``-`` and ``_``
    dropped, spaces as hyphens; headings inside fenced code blocks are not headings."""
    outside_code = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    headings = re.findall(r"^#+ +(.+?) *$", outside_code, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_heading_anchors_are_githubs():
    text = "# The recipe: configs/x_y.yaml\n```\n# not a heading\n```\n## Fine-tuning (`--init`)\n"
    assert _heading_anchors(text) == {"the-recipe-configsx_yyaml", "fine-tuning---init"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_link_within_the_project_reaches_a_file_and_heading(doc):
    text = doc.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL))
    local = [target for target in targets if not re.match(r"[a-z]+:", target)]  # not https:, mailto:
    if doc == README:  # it links to its own sections and to docs/: none found means the pattern broke
        assert local, "README.md links nowhere within the project: is the pattern still right?"
    for target in local:
        path, _, anchor = target.partition("#")
        file = (doc.parent / path) if path else doc
        assert file.exists(), f"{doc.name}: ({target}) names a file that is not there"
        if anchor:
            assert anchor in _heading_anchors(file.read_text()), f"{doc.name}: ({target}) names no heading"
