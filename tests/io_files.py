"""What the pcea.io tests write and check: a tetrahedron as OFF, PCD files, random clouds, a normalised
cloud (tests/io/ and test_hostile_inputs.py)."""

from __future__ import annotations

import numpy as np
import pytest

TETRA_VERTICES = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
TETRA_FACES = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def write(path, text: str, newline: str = "\n"):
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def tetra_off(newline="\n", glued=False) -> str:
    first = "OFF4 4 0\n" if glued else "OFF\n# a comment\n4 4 0\n"
    body = "".join(f"{x} {y} {z}\n" for x, y, z in TETRA_VERTICES)
    body += "".join(f"3 {a} {b} {c}\n" for a, b, c in TETRA_FACES)
    return (first + body).replace("\n", newline)


def random_cloud(n=50, seed=0, columns=3):
    return np.random.default_rng(seed).normal(size=(n, columns))


def assert_normalised(points, num_points, channels):
    assert points.shape == (num_points, channels)
    assert points.dtype == np.float32
    radius = np.linalg.norm(points[:, :3], axis=1)
    assert radius.max() == pytest.approx(1.0, abs=1e-5)
    # for meshes and clouds alike the centroid is the origin up to sampling noise
    assert np.abs(points[:, :3].mean(axis=0)).max() < 1e-5


PCD_FIELDS = ("x", "y", "z", "normal_x", "normal_y", "normal_z")


def lzf_compress(data: bytes, window: int = 64) -> bytes:
    """A naive LZF encoder (literal runs, and back references found by brute force) for test files."""
    out, literal, i = bytearray(), bytearray(), 0

    def flush():
        for start in range(0, len(literal), 32):
            chunk = literal[start:start + 32]
            out.append(len(chunk) - 1)
            out.extend(chunk)
        literal.clear()

    while i < len(data):
        best, distance = 0, 0
        for dist in range(1, min(i, window) + 1):
            length = 0
            while length < 264 and i + length < len(data) and data[i + length - dist] == data[i + length]:
                length += 1
            if length > best:
                best, distance = length, dist
        if best < 3:
            literal.append(data[i])
            i += 1
            continue
        flush()
        length, offset = best - 2, distance - 1
        out.extend([(min(length, 7) << 5) | (offset >> 8)] + ([length - 7] if length >= 7 else [])
                   + [offset & 0xFF])
        i += best
    flush()
    return bytes(out)


def pcd_bytes(cloud, data="binary", *, fields=PCD_FIELDS) -> bytes:
    """A PCD v0.7 file of float32 fields (plus a uchar 'label' and a 3-float padding field '_')."""
    cloud = np.asarray(cloud, dtype=np.float32)
    count = len(cloud)
    names = list(fields[:cloud.shape[1]])
    text = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
                      f"FIELDS {' '.join(names)} label _\nSIZE {'4 ' * len(names)}1 4\n"
                      f"TYPE {'F ' * len(names)}U F\nCOUNT {'1 ' * len(names)}1 3\n"
                      f"WIDTH {count}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {count}\n")
    labels = (np.arange(count) % 7).astype(np.uint8)
    padding = np.zeros((count, 3), np.float32)
    if data == "ascii":
        rows = [" ".join(repr(float(v)) for v in row) + f" {label} 0 0 0"
                for row, label in zip(cloud, labels, strict=True)]
        return (text + "DATA ascii\n" + "\n".join(rows) + "\n").encode()
    if data == "binary":
        records = np.zeros(count, dtype=[("xyz", "<f4", cloud.shape[1]), ("label", "u1"), ("pad", "<f4", 3)])
        records["xyz"], records["label"] = cloud, labels
        return (text + "DATA binary\n").encode() + records.tobytes()
    body = b"".join(cloud[:, j].astype("<f4").tobytes() for j in range(cloud.shape[1]))
    body += labels.tobytes() + padding.tobytes()
    packed = lzf_compress(body)
    return ((text + "DATA binary_compressed\n").encode() + len(packed).to_bytes(4, "little")
            + len(body).to_bytes(4, "little") + packed)
