#!/usr/bin/env python3
"""Classify point-cloud and mesh files with an exported pcea model, without PyTorch.

    python scripts/onnx_classify.py model.onnx chair.off scan.ply points.npy [--top-k 3] [--json]

Needs numpy, onnxruntime and, for meshes and PLY files, trimesh; never torch, and not
pcea either (importing pcea imports torch), so this file carries its own small readers.
A file becomes a cloud the way ``pcea classify`` makes one (:func:`pcea.io.load_points`),
with the same seed giving the same points and so the same classes
(tests/test_onnx_runtime.py compares the two):

1. read the points (``.npy .txt .xyz .pts .csv .pcd``, ``.ply`` without faces) or the
   mesh (``.off .stl .obj .glb``, ``.ply`` with faces);
2. sample ``num_points`` (from the model's metadata): rows drawn without replacement
   (with replacement from a smaller file) after a uniform scale by the largest
   coordinate, or points uniform over a mesh's surface, faces chosen by area;
3. centre on the mean and scale into the unit sphere (float32);
4. turn from the file's up axis into the model's y-up frame, (x, y, z) -> (x, z, -y)
   for z-up files; ``--up auto`` takes y for .obj and .glb and z for the rest.

The frame's rotation, the default up axis of each extension, the class names, the number
of points and the input's channels come from the ONNX file's metadata (``pcea export``
writes them). Exit status 0, or 1 when a file could not be read or on a bad option.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

MESH_SUFFIXES = (".off", ".stl", ".obj", ".glb")
POINT_SUFFIXES = (".npy", ".txt", ".xyz", ".pts", ".csv", ".pcd")
_SEPARATORS = re.compile(r"[,;\s]+")
_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "<i1", ("I", 2): "<i2", ("I", 4): "<i4",
              ("I", 8): "<i8", ("U", 1): "<u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"}


class InputError(Exception):
    """A file that cannot be classified; the message starts with its path."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")


# --- the model and its metadata ------------------------------------------------------------


def open_model(path: str, threads: int | None = None):
    """An onnxruntime session on the CPU and the model's pcea metadata (JSON-decoded)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for every bad file
        raise InputError(Path(path), f"cannot load as an ONNX model: {str(err).strip().splitlines()[0]}"
                         ) from None
    raw = session.get_modelmeta().custom_metadata_map
    missing = [key for key in ("class_names", "num_points", "in_channels", "frame") if key not in raw]
    if missing:
        raise InputError(Path(path), f"not a pcea export: no {', '.join(missing)} in its metadata "
                                     "(write it with pcea export)")
    return session, {key: json.loads(value) for key, value in raw.items()}


# --- reading files ------------------------------------------------------------------------


def load_cloud(path: str | Path, meta: dict, seed: int = 0, up: str = "auto") -> np.ndarray:
    """A file as the model's input cloud: (num_points, in_channels) float32, normalised, y up."""
    path = Path(path)
    num_points, channels = int(meta["num_points"]), int(meta["in_channels"])
    normals = channels >= 6
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(path, "no such file")
    frame = meta["frame"]
    up = frame["default_up"].get(suffix, "z") if up == "auto" else up
    rng = np.random.default_rng(seed)
    mesh = _read_mesh(path, suffix) if suffix in MESH_SUFFIXES or _is_ply_mesh(path, suffix) else None
    if mesh is not None:
        points, face_normals = _sample_surface(path, *mesh, num_points, rng)
        cloud = np.concatenate([points, face_normals], axis=1) if normals else points
    else:
        cloud = _read_points(path, suffix, 6 if normals else 3)
        if len(cloud) < num_points:
            print(f"onnx_classify: warning: {path}: only {len(cloud)} points, {num_points} requested; "
                  "sampling with replacement", file=sys.stderr)
        cloud = cloud[rng.choice(len(cloud), size=num_points, replace=len(cloud) < num_points)]
        scale = np.abs(cloud[:, :3]).max()  # in float64 first, as pcea does: no float32 overflow
        if scale > 0:
            cloud[:, :3] /= scale
    cloud = _normalize_unit_sphere(cloud)
    if up != frame["up"]:
        rotation = np.asarray(frame["z_up_to_y_up"], dtype=np.float32)
        turned = cloud.copy()
        turned[:, :3] = cloud[:, :3] @ rotation.T
        if normals:
            turned[:, 3:6] = cloud[:, 3:6] @ rotation.T
        cloud = turned
    if channels > cloud.shape[1]:
        raise InputError(path, f"the model takes {channels} channels per point")
    return cloud


def _normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """pcea.geometry.normalize_unit_sphere: centre on the mean, farthest point at 1 (float32)."""
    out = np.array(points, dtype=np.float32, copy=True)
    xyz = out[:, :3]
    xyz -= xyz.mean(axis=0)
    radius = float(np.sqrt((xyz**2).sum(axis=1)).max()) if len(xyz) else 0.0
    if radius > 0:
        xyz /= radius
    return out


def _sample_surface(path: Path, vertices: np.ndarray, faces: np.ndarray, n: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform over the surface (faces by area, Osada et al. 2002) and their face normals."""
    scale = float(np.abs(vertices).max()) or 1.0
    corners = vertices[faces] / scale  # (F, 3 corners, 3)
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # (F, 3)
    double_area = np.hypot(np.hypot(cross[:, 0], cross[:, 1]), cross[:, 2])  # (F,)
    total = double_area.sum()
    if not total > 0:
        raise InputError(path, "mesh has zero surface area")
    chosen = rng.choice(len(faces), size=n, p=double_area / total)  # (n,)
    r1 = np.sqrt(rng.random((n, 1)))
    r2 = rng.random((n, 1))
    a, b, c = corners[chosen, 0], corners[chosen, 1], corners[chosen, 2]  # (n, 3) each
    points = (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c  # (n, 3)
    return points, cross[chosen] / double_area[chosen, None]


def _is_ply_mesh(path: Path, suffix: str) -> bool:
    if suffix != ".ply":
        return False
    with path.open("rb") as handle:
        head = handle.read(64 * 1024)
    match = re.search(rb"element\s+face\s+(\d+)", head.split(b"end_header")[0])
    return bool(match and int(match.group(1)) > 0)


def _read_mesh(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and triangles (F, 3) int64."""
    if suffix == ".off":
        vertices, faces = _read_off(path)
    else:
        import trimesh

        try:
            mesh = trimesh.load(str(path), file_type=suffix[1:], force="mesh", process=False,
                                skip_materials=True)
        except Exception as err:  # trimesh raises anything on a broken file
            raise InputError(path, f"cannot read as {suffix[1:].upper()}: {err}") from None
        if not isinstance(mesh, trimesh.Trimesh):
            raise InputError(path, "file contains no triangle mesh")
        vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    if len(vertices) == 0 or len(faces) == 0:
        raise InputError(path, "mesh is empty (no vertices or no faces)")
    if faces.min() < 0 or faces.max() >= len(vertices) or not np.isfinite(vertices).all():
        raise InputError(path, "mesh has faces out of range or non-finite vertices")
    return vertices, faces


def _read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """OFF, including ModelNet40's glued first line ``OFF490 518 0``; polygons become fans."""
    lines = [line.split("#")[0].strip() for line in path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines or not lines[0].upper().startswith("OFF"):
        raise InputError(path, "not an OFF file (no OFF header)")
    counts = lines[0][3:].split() or lines[1].split()
    body = lines[1:] if lines[0][3:].split() else lines[2:]
    try:
        num_vertices, num_faces = int(counts[0]), int(counts[1])
        vertices = np.array([row.split()[:3] for row in body[:num_vertices]], dtype=np.float64)
        triangles = []
        for row in body[num_vertices:num_vertices + num_faces]:
            tokens = row.split()
            ring = [int(value) for value in tokens[1:1 + int(tokens[0])]]  # colours may follow
            triangles += [(ring[0], ring[i], ring[i + 1]) for i in range(1, len(ring) - 1)]
    except (IndexError, ValueError):
        raise InputError(path, "malformed OFF file") from None
    return vertices.reshape(-1, 3), np.array(triangles, dtype=np.int64).reshape(-1, 3)


def _read_points(path: Path, suffix: str, width: int) -> np.ndarray:
    """(N, width) float64 points of a point file, checked for count and finiteness."""
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputError(path, f"cannot read as .npy: {err or type(err).__name__}") from None
        array = array[0] if array.ndim == 3 and array.shape[0] == 1 else array
    elif suffix == ".pcd":
        array = _read_pcd(path, width)
    elif suffix == ".ply":
        import trimesh

        try:
            array = np.asarray(trimesh.load(str(path), file_type="ply", process=False).vertices)
        except Exception as err:  # trimesh raises anything on a broken file
            raise InputError(path, f"cannot read as PLY: {err}") from None
        if width > 3:
            raise InputError(path, "normals from PLY points are not read here; use pcea classify")
    elif suffix in (".txt", ".xyz", ".pts", ".csv"):
        array = _read_text(path)
    else:
        raise InputError(path, f"unknown extension {suffix or '(none)'!r}; expected one of "
                               f"{' '.join(sorted(POINT_SUFFIXES + MESH_SUFFIXES + ('.ply',)))}")
    if array.ndim != 2 or array.shape[1] < width:
        raise InputError(path, f"points have shape {array.shape}, expected (N, {width}) or wider")
    cloud = np.asarray(array[:, :width], dtype=np.float64)
    if len(cloud) == 0:
        raise InputError(path, "file contains no points")
    if not np.isfinite(cloud).all():
        raise InputError(path, "points have NaN or infinite values")
    return cloud


def _read_text(path: Path) -> np.ndarray:
    """Rows of numbers split by commas, semicolons, tabs or spaces; up to 5 header lines and a
    leading point count (the .pts convention) skipped, ``#`` and ``//`` lines ignored."""
    lines = [line.strip() for line in path.read_bytes().decode("utf-8-sig").splitlines()]
    lines = [line for line in lines if line and not line.startswith(("#", "//"))]
    start = 0
    while start < len(lines) and start < 5 and not _is_number_row(lines[start]):
        start += 1
    if start < len(lines) and len(_SEPARATORS.split(lines[start])) == 1 and len(lines) > start + 1:
        start += 1
    rows = [_SEPARATORS.split(row.strip(",; \t")) for row in lines[start:]]
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        raise InputError(path, "rows of different lengths, or something that is not a number") from None


def _is_number_row(line: str) -> bool:
    try:
        [float(token) for token in _SEPARATORS.split(line.strip(",; \t"))]
    except ValueError:
        return False
    return True


def _read_pcd(path: Path, width: int) -> np.ndarray:
    """PCD with DATA ascii or binary; rows with a NaN coordinate (PCL's invalid points) dropped."""
    data = path.read_bytes()
    header: dict[str, list[str]] = {}
    offset = 0
    for raw in data[:64 * 1024].split(b"\n")[:-1]:
        offset += len(raw) + 1
        line = raw.decode("ascii", errors="replace").strip()
        if line and not line.startswith("#"):
            key, *words = line.split()
            header[key.upper()] = words
            if key.upper() == "DATA":
                break
    names = header.get("FIELDS", [])
    kind = (header.get("DATA") or [""])[0].lower()
    wanted = ["x", "y", "z", "normal_x", "normal_y", "normal_z"][:width]
    if not names or any(name not in names for name in wanted):
        raise InputError(path, f"PCD without the fields {' '.join(wanted)}")
    count = int((header.get("POINTS") or header.get("WIDTH"))[0])
    if kind == "ascii":
        table = np.array([row.split() for row in data[offset:].decode("ascii").splitlines() if row.strip()
                          ][:count], dtype=np.float64)
        columns = {name: table[:, i] for i, name in enumerate(names)}  # COUNT 1 per field
    elif kind == "binary":
        sizes, types = header["SIZE"], header["TYPE"]
        dtype = np.dtype([(name, _PCD_TYPES[(kind_.upper(), int(size))])
                          for name, size, kind_ in zip(names, sizes, types, strict=True)])
        records = np.frombuffer(data[offset:offset + count * dtype.itemsize], dtype=dtype, count=count)
        columns = {name: records[name] for name in names}
    else:
        raise InputError(path, f"PCD DATA {kind}: only ascii and binary are read here; use pcea classify")
    cloud = np.stack([np.asarray(columns[name], dtype=np.float64) for name in wanted], axis=1)
    return cloud[~np.isnan(cloud).any(axis=1)]


# --- classifying --------------------------------------------------------------------------


def classify(session, meta: dict, clouds: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Softmax probabilities (len(clouds), num_classes) from the session, batch by batch."""
    fixed = meta.get("batch") if isinstance(meta.get("batch"), int) else None
    step = fixed or batch_size
    input_name = session.get_inputs()[0].name
    probabilities = []
    for start in range(0, len(clouds), step):
        chunk = np.stack(clouds[start:start + step])  # (B, N, C)
        count = len(chunk)
        if fixed and count < fixed:  # a model exported with a fixed batch: pad with copies
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - count, axis=0)])
        logits = session.run(None, {input_name: chunk.astype(np.float32)})[0][:count]
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities.append(exp / exp.sum(axis=1, keepdims=True))
    return np.concatenate(probabilities)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onnx_classify", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an .onnx file written by pcea export")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--seed", type=int, default=0, help="seed of the point sampling (0, as pcea)")
    parser.add_argument("--up", choices=["auto", "y", "z"], default="auto",
                        help="the files' up axis (auto: y for .obj/.glb, z otherwise)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (its default: all cores)")
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be at least 1")
    try:
        session, meta = open_model(args.model, args.threads)
    except InputError as err:
        print(f"onnx_classify: error: {err}", file=sys.stderr)
        return 1
    names = meta["class_names"]
    paths, clouds, failed = [], [], 0
    for name in args.files:
        try:
            clouds.append(load_cloud(name, meta, args.seed, args.up))
            paths.append(name)
        except (InputError, OSError, UnicodeDecodeError, ValueError) as err:
            failed += 1
            print(f"onnx_classify: skipped {err if isinstance(err, InputError) else f'{name}: {err}'}",
                  file=sys.stderr)
    if clouds:
        probabilities = classify(session, meta, clouds, args.batch_size)
        k = min(args.top_k, len(names))
        for path, probs in zip(paths, probabilities, strict=True):
            order = np.argsort(-probs, kind="stable")[:k]
            if args.json:
                print(json.dumps({"path": path, "top_k": [
                    {"class": names[i], "probability": round(float(probs[i]), 6)} for i in order]}))
            else:
                print(path, "  ".join(f"{names[i]} {probs[i]:.4f}" for i in order))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
