"""Weights that ship inside the package, loadable by name: ``pcea.load_model("modelnet40")``.

Each entry is a pcea checkpoint stripped to what inference needs (the weights, the model
config, the class names, the frame and the training record; no optimiser state), next to
a JSON card with its SHA-256, recipe, data and validation figures. :func:`builtin_path`
checks the file against the card's SHA-256 before anything loads it; the checkpoint
format itself is then read with ``torch.load(weights_only=True)`` as every checkpoint is.
``scripts/ship_weights.py RUN_DIR`` writes both files from a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path

from pcea.digest import file_sha256
from pcea.errors import PceaFileError

__all__ = ["BUILTIN", "builtin_card", "builtin_path", "is_builtin"]

HERE = Path(__file__).parent
# Names; the files are HERE / f"{name}.pt" and f"{name}.json". "modelnet40" is the default for a
# user's files (trained for any yaw and partial views); "modelnet40-aligned" is the ModelNet40
# protocol's model (aligned clouds only), for comparison with papers.
BUILTIN = ("modelnet40", "modelnet40-aligned")


def is_builtin(name: object) -> bool:
    """Whether ``name`` names built-in weights (and not a file or directory that exists)."""
    return isinstance(name, str) and name in BUILTIN and not Path(name).exists()


def builtin_card(name: str) -> dict:
    """The JSON card of built-in weights: sha256, recipe, data, frame, validation OA and mAcc."""
    path = HERE / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PceaFileError(path, f"the built-in weights {name!r} are not installed with this copy "
                                  "of pcea") from None
    except (OSError, ValueError) as err:
        raise PceaFileError(path, f"unreadable weights card ({err})") from None


def builtin_path(name: str) -> Path:
    """The checkpoint file of built-in weights, after checking its SHA-256 against the card.

    Raises:
        PceaFileError: unknown name, missing file, or a file whose SHA-256 differs from the card's.
    """
    if name not in BUILTIN:
        raise PceaFileError(name, f"no built-in weights of that name; built in: {', '.join(BUILTIN)}")
    card = builtin_card(name)
    path = HERE / card["file"]
    try:
        digest = file_sha256(path)
    except OSError as err:
        raise PceaFileError(path, f"cannot read the built-in weights ({err.strerror or err})") from None
    if digest != card["sha256"]:
        raise PceaFileError(path, f"SHA-256 {digest[:12]}... differs from the card's "
                                  f"{card['sha256'][:12]}...; the installed weights are damaged "
                                  "(reinstall pcea)")
    return path
