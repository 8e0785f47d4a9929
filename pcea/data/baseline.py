"""A classical baseline: the D2 shape distribution with a scikit-learn classifier.

D2 (Osada et al., "Shape distributions", ACM TOG 2002) describes a shape by the
histogram of distances between random pairs of its surface points. It is invariant to
rotation and blind to how the parts are arranged, which is what a network has to learn
beyond it; a dataset on which D2 already scores like the network is a lookup table.

The classifier is chosen fairly: an RBF SVM on standardised histograms (a small grid of
C and gamma) and a random forest compete by stratified cross-validation on the training
split, and the winner is refitted on the whole training split and scored once on test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pcea.data.modelnet import ModelNet40H5
from pcea.errors import PceaError, PceaFileError

__all__ = ["d2_histograms", "d2_baseline", "load_h5_split", "run_baseline"]


def d2_histograms(clouds: np.ndarray, *, pairs: int = 8192, bins: int = 64, max_distance: float = 2.0,
                  seed: int = 0) -> np.ndarray:
    """D2 shape distributions of a batch of clouds.

    Args:
        clouds: (B, N, C) points, coordinates in columns 0:3 (normalised to the unit
            sphere, so every distance is in [0, 2]).
        pairs: random point pairs per cloud.
        bins: histogram bins over [0, max_distance].
        max_distance: upper edge of the last bin; longer distances land in it.
        seed: seed of the pair sampling.

    Returns:
        (B, bins) float64, each row summing to 1.
    """
    clouds = np.asarray(clouds, dtype=np.float64)[..., :3]
    if clouds.ndim != 3 or clouds.shape[1] < 2:
        raise ValueError(f"expected (B, N >= 2, C >= 3) clouds, got shape {clouds.shape}")
    B, N, _ = clouds.shape
    rng = np.random.default_rng(seed)
    first = rng.integers(0, N, size=(B, pairs))
    second = (first + rng.integers(1, N, size=(B, pairs))) % N  # never the same point
    rows = np.arange(B)[:, None]
    distances = np.linalg.norm(clouds[rows, first] - clouds[rows, second], axis=-1)  # (B, pairs)
    index = np.minimum((distances / max_distance * bins).astype(np.int64), bins - 1)
    histograms = np.zeros((B, bins))
    np.add.at(histograms, (np.repeat(np.arange(B), pairs), index.ravel()), 1.0)
    return histograms / pairs


def _candidates(seed: int, trees: int) -> dict:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    models = {f"svm-rbf C={c} gamma={g}": make_pipeline(StandardScaler(), SVC(C=c, gamma=g))
              for c in (1.0, 10.0, 100.0) for g in ("scale", 0.003)}
    models[f"random-forest {trees}"] = RandomForestClassifier(n_estimators=trees, random_state=seed)
    return models


def d2_baseline(train_points: np.ndarray, train_labels: np.ndarray, test_points: np.ndarray,
                test_labels: np.ndarray, seed: int = 0, *, trees: int = 300,
                details: dict | None = None) -> float:
    """Test accuracy of the best D2 classifier picked by cross-validation on the training split.

    Args:
        train_points: (n_train, N, C) clouds.
        train_labels: (n_train,) integer labels.
        test_points: (n_test, N, C) clouds.
        test_labels: (n_test,) integer labels.
        seed: seed of the pair sampling, the folds and the forest.
        trees: trees of the random-forest candidate.
        details: if given, filled with "classifier" (the chosen one) and "cv_accuracy".

    Returns:
        Test accuracy in [0, 1].
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    train_labels = np.asarray(train_labels).ravel()
    test_labels = np.asarray(test_labels).ravel()
    train_features = d2_histograms(train_points, seed=seed)
    test_features = d2_histograms(test_points, seed=seed + 1)
    models = _candidates(seed, trees)
    folds = min(5, int(np.bincount(train_labels).min()))
    scores = {}
    if folds >= 2:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        scores = {name: float(cross_val_score(model, train_features, train_labels, cv=splitter).mean())
                  for name, model in models.items()}
        best = max(scores, key=scores.get)
    else:  # too few shapes per class to cross-validate: the default SVM
        best = next(iter(models))
    model = models[best].fit(train_features, train_labels)
    accuracy = float((model.predict(test_features) == test_labels).mean())
    if details is not None:
        details.update(classifier=best, cv_accuracy=scores.get(best))
    return accuracy


def _h5_root(path: Path) -> Path:
    for candidate in (path, path / "h5"):
        if (candidate / "train_files.txt").is_file():
            return candidate
    raise PceaFileError(path, "no modelnet40_ply_hdf5_2048 layout here (expected train_files.txt, "
                              "test_files.txt and ply_data_*.h5, or an h5/ folder holding them)")


def load_h5_split(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All clouds and labels of one split of an h5-layout dataset, every stored point of each.

    Read by :class:`pcea.data.ModelNet40H5`, with its checks (shapes, labels in range,
    finite values, truncated files), in pcea's y-up frame.

    Args:
        path: the h5 layout's folder, or a pcea-shapes root holding it in ``h5/``.
        split: "train" or "test".

    Returns:
        points (n, N, 3) float32 and labels (n,) int64.
    """
    dataset = ModelNet40H5(_h5_root(Path(path)), split, num_points=None)
    return dataset.clouds, dataset.labels


def run_baseline(path: str | os.PathLike, *, seed: int = 0, trees: int = 300) -> dict:
    """Train and test the D2 baseline on an h5-layout dataset.

    Args:
        path: the h5 layout's folder, or a pcea-shapes root.
        seed: the baseline's seed.
        trees: trees of the random-forest candidate.

    Returns:
        {"accuracy", "classifier", "cv_accuracy", "train", "test", "classes"}.
    """
    train_points, train_labels = load_h5_split(path, "train")
    test_points, test_labels = load_h5_split(path, "test")
    if len(np.unique(train_labels)) < 2:
        raise PceaError(f"{path}: the training split has fewer than two classes")
    if train_points.shape[1] < 2:
        raise PceaError(f"{path}: the clouds have {train_points.shape[1]} point(s); D2 needs pairs")
    details: dict = {}
    accuracy = d2_baseline(train_points, train_labels, test_points, test_labels, seed, trees=trees,
                           details=details)
    return {"accuracy": accuracy, **details, "train": len(train_labels), "test": len(test_labels),
            "classes": int(max(train_labels.max(), test_labels.max())) + 1}
