"""The procedural shapes of pcea-shapes: mesh primitives, one builder per class, :func:`make_shape`.

Every shape is a mesh assembled from primitives (boxes, rods, discs, tori, surfaces of
revolution) with random proportions, part counts, optional parts, a small smooth
deformation and a random turn about the up axis. Classes share parts on purpose (a
table, a stool and a bench are all a top on legs; a mug, a vase and a bottle are all
surfaces of revolution) and overlap in proportions, so that telling them apart needs
the arrangement of the parts, not just the size or the spread of the points.

Shapes are built z-up (trimesh's primitives are) and turned y-up by :func:`make_shape`,
because the ModelNet40 h5 release that the PCT family trains on is y-up.
:mod:`pcea.data.synth` writes them in the three ModelNet40 layouts. trimesh is imported
by the functions that build meshes, not with this module: the training loop imports
:mod:`pcea.data.synth` to generate pcea-shapes on demand, and ``import pcea`` should not
pay for trimesh (and SciPy under it) when no mesh is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trimesh import Trimesh as Mesh

__all__ = ["CLASS_NAMES", "make_shape"]

MAX_YAW = np.pi / 6  # turn about the up axis, either way (ModelNet40 is mostly aligned)
STRETCH = np.log(1.4)  # per-axis stretch in [1/1.4, 1.4]: proportions overlap across classes


# --- primitives, all z-up ----------------------------------------------------------------

def _box(size, center) -> Mesh:
    import trimesh

    return trimesh.creation.box(extents=size, transform=trimesh.transformations.translation_matrix(center))


def _rod(start, end, radius: float, sections: int = 8) -> Mesh:
    import trimesh

    return trimesh.creation.cylinder(radius=radius, segment=[start, end], sections=sections)


def _disc(radius: float, thickness: float, z: float, sections: int = 24) -> Mesh:
    return _rod([0, 0, z - thickness / 2], [0, 0, z + thickness / 2], radius, sections)


def _revolve(profile, sections: int = 24) -> Mesh:
    """Surface of revolution about z of a (radius, z) profile from axis to axis, normals outward."""
    import trimesh

    mesh = trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=sections)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _shell(outer: np.ndarray, thickness: float, sections: int = 24) -> Mesh:
    """A thin-walled open vessel (mug, bowl, vase) from its outer (radius, z) profile.

    ``outer`` runs from the bottom centre (radius 0) up to the rim; the inner wall is the
    outer one moved inwards by ``thickness``, so the surface is closed and its normals
    point out of the material.
    """
    inner = outer[::-1].copy()
    inner[:, 0] = np.maximum(inner[:, 0] - thickness, 0.0)
    inner[:, 1] = np.maximum(inner[:, 1], outer[0, 1] + thickness)
    return _revolve(np.concatenate([outer, inner]), sections)


def _legs(rng, *, count: int, half_x: float, half_y: float, top: float, radius: float,
          splay: float = 0.0, ring: bool = False, sections: int = 8) -> list[Mesh]:
    """Legs from the floor (z=0) to ``top``: at the rectangle's corners, or on an ellipse."""
    if ring:
        phase = rng.uniform(0, 2 * np.pi)
        angles = phase + 2 * np.pi * np.arange(count) / count
        feet = np.stack([half_x * np.cos(angles), half_y * np.sin(angles)], axis=1)
    else:
        xs = np.linspace(-half_x, half_x, count // 2)
        feet = np.array([[x, y] for x in xs for y in (-half_y, half_y)])
    return [_rod([x * (1 + splay), y * (1 + splay), 0.0], [x, y, top], radius, sections)
            for x, y in feet]


def _leg_sections(rng) -> int:
    return int(rng.choice([4, 8]))


# --- the classes -------------------------------------------------------------------------

def _table(rng) -> list[Mesh]:
    height, thick = rng.uniform(0.55, 0.85), rng.uniform(0.025, 0.06)
    leg_r = rng.uniform(0.02, 0.045)
    under = height - thick
    if rng.random() < 0.35:  # round top
        radius = rng.uniform(0.35, 0.7)
        parts = [_disc(radius, thick, height - thick / 2)]
        if rng.random() < 0.3:  # pedestal
            parts += [_rod([0, 0, 0], [0, 0, under], rng.uniform(0.04, 0.09)),
                      _disc(rng.uniform(0.25, 0.5) * radius * 1.5, 0.03, 0.015)]
        else:
            spread = rng.uniform(0.55, 0.85) * radius
            parts += _legs(rng, count=int(rng.integers(3, 6)), half_x=spread, half_y=spread, top=under,
                           radius=leg_r, splay=rng.uniform(0, 0.15), ring=True, sections=_leg_sections(rng))
        return parts
    width = rng.uniform(0.8, 1.8)
    depth = rng.uniform(0.5, 1.0) * min(width, 1.1)
    parts = [_box([width, depth, thick], [0, 0, height - thick / 2])]
    hx, hy = width / 2 - rng.uniform(0.04, 0.12), depth / 2 - rng.uniform(0.04, 0.1)
    count = 6 if width > 1.4 and rng.random() < 0.4 else 4
    parts += _legs(rng, count=count, half_x=hx, half_y=hy, top=under, radius=leg_r,
                   splay=rng.uniform(0, 0.08), sections=_leg_sections(rng))
    if rng.random() < 0.4:  # apron under the top
        apron = rng.uniform(0.05, 0.12)
        parts += [_box([2 * hx, 0.02, apron], [0, s * hy, under - apron / 2]) for s in (-1, 1)]
        parts += [_box([0.02, 2 * hy, apron], [s * hx, 0, under - apron / 2]) for s in (-1, 1)]
    if rng.random() < 0.25:  # lower shelf
        parts.append(_box([2 * hx, 2 * hy, 0.02], [0, 0, rng.uniform(0.1, 0.3) * height]))
    return parts


def _stool(rng) -> list[Mesh]:
    import trimesh

    height, thick = rng.uniform(0.42, 0.85), rng.uniform(0.03, 0.07)
    under = height - thick
    round_seat = rng.random() < 0.7
    size = rng.uniform(0.15, 0.32)
    seat = (_disc(size, thick, height - thick / 2) if round_seat
            else _box([2 * size, 2 * size, thick], [0, 0, height - thick / 2]))
    parts = [seat]
    if rng.random() < 0.2:  # bar stool: column, foot ring, base disc
        parts += [_rod([0, 0, 0], [0, 0, under], rng.uniform(0.025, 0.05)),
                  _disc(rng.uniform(0.15, 0.25), 0.025, 0.0125)]
        if rng.random() < 0.6:
            parts.append(trimesh.creation.torus(rng.uniform(0.12, 0.2), 0.01, 24, 8,
                                                transform=trimesh.transformations.translation_matrix(
                                                    [0, 0, rng.uniform(0.25, 0.45) * height])))
        return parts
    spread = rng.uniform(0.6, 0.9) * size
    splay = rng.uniform(0.0, 0.4)
    count = int(rng.choice([3, 4, 4, 5]))
    parts += _legs(rng, count=count, half_x=spread, half_y=spread, top=under, radius=rng.uniform(0.015, 0.03),
                   splay=splay, ring=round_seat or count != 4, sections=_leg_sections(rng))
    if rng.random() < 0.4:  # a ring joining the legs
        z = rng.uniform(0.25, 0.45) * under
        ring_r = spread * (1 + splay * (1 - z / under))
        parts.append(trimesh.creation.torus(ring_r, 0.01, 24, 8,
                                            transform=trimesh.transformations.translation_matrix([0, 0, z])))
    return parts


def _bench(rng) -> list[Mesh]:
    length, depth = rng.uniform(0.9, 2.0), rng.uniform(0.3, 0.6)
    height, thick = rng.uniform(0.38, 0.5), rng.uniform(0.04, 0.08)
    under = height - thick
    parts = [_box([length, depth, thick], [0, 0, height - thick / 2])]
    hx, hy = length / 2 - rng.uniform(0.05, 0.2), depth / 2 - rng.uniform(0.03, 0.08)
    style = rng.random()
    if style < 0.35:  # two slab legs
        slab = rng.uniform(0.03, 0.06)
        parts += [_box([slab, 2 * hy + 0.04, under], [s * hx, 0, under / 2]) for s in (-1, 1)]
    else:
        count = 6 if style > 0.8 else 4
        parts += _legs(rng, count=count, half_x=hx, half_y=hy, top=under, radius=rng.uniform(0.02, 0.04),
                       splay=rng.uniform(0, 0.1), sections=_leg_sections(rng))
    if rng.random() < 0.3:  # backrest on two posts
        back_h = rng.uniform(0.25, 0.45)
        y = -depth / 2 + 0.02
        parts += [_rod([s * hx, y, height], [s * hx, y, height + back_h], 0.02) for s in (-1, 1)]
        parts.append(_box([2 * hx + 0.1, 0.03, rng.uniform(0.08, 0.2)], [0, y, height + back_h - 0.06]))
    return parts


def _chair(rng) -> list[Mesh]:
    import trimesh

    width, depth = rng.uniform(0.4, 0.56), rng.uniform(0.4, 0.56)
    height, thick = rng.uniform(0.4, 0.5), rng.uniform(0.03, 0.07)
    under = height - thick
    parts = [_box([width, depth, thick], [0, 0, height - thick / 2])]
    hx, hy = width / 2 - 0.03, depth / 2 - 0.03
    if rng.random() < 0.2:  # office chair: column and five spokes
        parts.append(_rod([0, 0, 0.08], [0, 0, under], 0.03))
        for angle in rng.uniform(0, 1) + 2 * np.pi * np.arange(5) / 5:
            parts.append(_rod([0, 0, 0.08], [0.3 * np.cos(angle), 0.3 * np.sin(angle), 0.03], 0.02))
    else:
        parts += _legs(rng, count=4, half_x=hx, half_y=hy, top=under, radius=rng.uniform(0.015, 0.03),
                       splay=rng.uniform(0, 0.12), sections=_leg_sections(rng))
    back_h = rng.uniform(0.3, 0.6)
    y = -depth / 2 + 0.02
    tilt = rng.uniform(0, 0.12)
    style = rng.random()
    if style < 0.45:  # solid back
        back = _box([width, 0.03, back_h], [0, 0, back_h / 2])
        back.apply_transform(trimesh.transformations.rotation_matrix(-tilt, [1, 0, 0]))
        back.apply_translation([0, y, height])
        parts.append(back)
    else:  # two posts, a top rail and 0-4 slats
        parts += [_rod([s * hx, y, height], [s * hx, y - tilt * back_h, height + back_h], 0.018)
                  for s in (-1, 1)]
        rail = rng.uniform(0.05, 0.12)
        parts.append(_box([2 * hx, 0.03, rail], [0, y - tilt * back_h, height + back_h - 0.05]))
        for x in np.linspace(-hx, hx, int(rng.integers(0, 5)) + 2)[1:-1]:
            parts.append(_rod([x, y, height], [x, y - tilt * back_h, height + back_h], 0.012, 4))
    if rng.random() < 0.3:  # armrests
        arm_z = height + rng.uniform(0.18, 0.28)
        for s in (-1, 1):
            parts.append(_box([0.05, depth, 0.03], [s * (width / 2 + 0.02), 0, arm_z]))
            x = s * (width / 2 + 0.02)
            parts.append(_rod([x, hy, height], [x, hy, arm_z], 0.015))
    return parts


def _shelf(rng) -> list[Mesh]:
    height, width, depth = rng.uniform(0.8, 2.0), rng.uniform(0.5, 1.2), rng.uniform(0.25, 0.45)
    side = rng.uniform(0.02, 0.04)
    base = rng.uniform(0.0, 0.12) if rng.random() < 0.5 else 0.0
    parts = [_box([side, depth, height - base], [s * (width - side) / 2, 0, base + (height - base) / 2])
             for s in (-1, 1)]
    boards = int(rng.integers(2, 7))
    for z in np.linspace(base + 0.01, height - 0.01, boards):
        z = z + (rng.uniform(-0.03, 0.03) if 0 < z < height - 0.05 else 0.0)
        parts.append(_box([width - 2 * side, depth - 0.01, 0.02], [0, 0, z]))
    if rng.random() < 0.5:  # back panel
        parts.append(_box([width, 0.01, height - base], [0, -depth / 2, base + (height - base) / 2]))
    if base > 0:
        parts += _legs(rng, count=4, half_x=width / 2 - 0.05, half_y=depth / 2 - 0.05, top=base,
                       radius=0.02, sections=_leg_sections(rng))
    return parts


def _lamp(rng) -> list[Mesh]:
    import trimesh

    height = rng.uniform(0.35, 1.7)
    base_r = rng.uniform(0.08, 0.2) * (0.6 + 0.4 * height)
    parts = [_disc(base_r, 0.03, 0.015, 24) if rng.random() < 0.7
             else _box([2 * base_r, 2 * base_r, 0.03], [0, 0, 0.015])]
    shade_h = rng.uniform(0.12, 0.3) * (0.5 + 0.5 * height)
    bottom_r, top_r = shade_h * rng.uniform(0.6, 1.3), shade_h * rng.uniform(0.25, 0.9)
    shade = _revolve([[0, 0], [bottom_r, 0], [top_r, shade_h], [0, shade_h]], sections=24)
    pole_r = rng.uniform(0.008, 0.02)
    if rng.random() < 0.4:  # an arm that reaches out, the shade tilted on its end
        pole_top = np.array([0, 0, height * rng.uniform(0.6, 0.85)])
        reach = np.array([rng.uniform(0.15, 0.45) * height, 0, height * rng.uniform(-0.05, 0.15)])
        end = pole_top + reach
        parts += [_rod([0, 0, 0.03], pole_top, pole_r), _rod(pole_top, end, pole_r)]
        shade.apply_transform(trimesh.transformations.rotation_matrix(rng.uniform(0.3, 1.2), [0, 1, 0]))
        shade.apply_translation(end - [0, 0, shade_h * 0.8])
    else:
        top = height - shade_h
        parts.append(_rod([0, 0, 0.03], [0, 0, top + shade_h / 2], pole_r))
        shade.apply_translation([0, 0, top])
    parts.append(shade)
    return parts


def _mug(rng) -> list[Mesh]:
    radius, height = rng.uniform(0.035, 0.055), rng.uniform(0.05, 0.16)
    taper = rng.uniform(-0.2, 0.15)
    zs = np.linspace(0, height, 6)
    outer = np.concatenate([[[0, 0]], np.stack([radius * (1 + taper * zs / height), zs], axis=1)])
    parts = [_shell(outer, rng.uniform(0.003, 0.007))]
    # the handle: an arc of rods standing in the xz plane against the side
    span, wire = rng.uniform(0.3, 0.42) * height, rng.uniform(0.005, 0.009)
    x0, z0 = radius * (1 + taper * 0.5) - 0.004, rng.uniform(0.45, 0.55) * height
    t = np.linspace(-np.pi / 2, np.pi / 2, 7)
    reach = span * rng.uniform(0.6, 1.1)
    arc = np.stack([x0 + reach * np.cos(t), np.zeros_like(t), z0 + span * np.sin(t)], axis=1)
    parts += [_rod(arc[i], arc[i + 1], wire, 6) for i in range(len(arc) - 1)]
    return parts


def _bottle(rng) -> list[Mesh]:
    radius = rng.uniform(0.03, 0.06)
    body, shoulder = radius * rng.uniform(2.0, 5.0), radius * rng.uniform(0.4, 1.5)
    neck = radius * rng.uniform(0.8, 2.5)
    neck_r = radius * rng.uniform(0.22, 0.45)
    t = np.linspace(0, np.pi / 2, 5)[1:]
    shoulder_pts = np.stack([neck_r + (radius - neck_r) * np.cos(t), body + shoulder * np.sin(t)], axis=1)
    top = body + shoulder + neck
    cap_r = neck_r * rng.uniform(1.0, 1.25)
    cap_z = top - 0.2 * neck
    profile = np.concatenate([[[0, 0], [radius, 0], [radius, body]], shoulder_pts,
                              [[neck_r, cap_z], [cap_r, cap_z], [cap_r, top], [0, top]]])
    sections = 4 if rng.random() < 0.1 else 24  # a few square bottles
    return [_revolve(profile, sections)]


def _bowl(rng) -> list[Mesh]:
    import trimesh

    radius = rng.uniform(0.06, 0.15)
    depth = radius * rng.uniform(0.3, 1.0)
    foot = rng.uniform(0.0, 0.15) * depth if rng.random() < 0.6 else 0.0
    t = np.linspace(0, np.pi / 2, 8)
    power = rng.uniform(0.7, 1.5)  # flatter or rounder walls
    outer = np.stack([radius * np.sin(t) ** power, foot + depth * (1 - np.cos(t))], axis=1)
    outer = np.concatenate([[[0, foot]], outer[1:]])
    parts = [_shell(outer, rng.uniform(0.004, 0.01))]
    if foot > 0:
        ring = trimesh.creation.annulus(r_min=radius * 0.3, r_max=radius * 0.4, height=foot, sections=24)
        ring.apply_translation([0, 0, foot / 2])
        parts.append(ring)
    return parts


def _vase(rng) -> list[Mesh]:
    height = rng.uniform(0.15, 0.5)
    knots = rng.uniform(0.12, 0.35, size=5) * height
    knots[-1] *= rng.uniform(0.4, 1.0)
    zs = np.linspace(0, height, 12)
    radii = np.interp(zs, np.linspace(0, height, 5), knots)
    outer = np.concatenate([[[0, 0]], np.stack([radii, zs], axis=1)])
    return [_shell(outer, 0.006, sections=24)]


def _airplane(rng) -> list[Mesh]:
    import trimesh

    length = rng.uniform(1.0, 1.6)
    body_r = length * rng.uniform(0.04, 0.1)
    fuselage = trimesh.creation.capsule(height=length - 2 * body_r, radius=body_r, count=[12, 12])
    fuselage.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    parts = [fuselage]
    span, chord = length * rng.uniform(0.55, 1.3), length * rng.uniform(0.1, 0.28)
    sweep, dihedral = rng.uniform(0.0, 0.6), rng.uniform(-0.05, 0.12)
    wing_x = length * rng.uniform(-0.12, 0.12)
    wing_z = body_r * rng.uniform(-0.7, 0.7)  # low, mid or high wing
    parts += _wings(span, chord, sweep, dihedral, [wing_x, 0, wing_z], thickness=0.02 * length)
    tail_x = -length / 2 + chord * 0.4
    parts += _wings(span * rng.uniform(0.25, 0.45), chord * 0.6, sweep, 0.0, [tail_x, 0, 0],
                    thickness=0.012 * length)
    fin_h = length * rng.uniform(0.1, 0.2)
    fin = _box([chord * 0.6, 0.012 * length, fin_h], [0, 0, fin_h / 2])
    fin.vertices[:, 0] -= fin.vertices[:, 2] * sweep
    fin.apply_translation([tail_x, 0, body_r * 0.5])
    parts.append(fin)
    for y in span * np.array([0.15, 0.3])[: int(rng.integers(0, 3))]:  # 0, 2 or 4 engines
        for s in (-1, 1):
            x = wing_x + y * sweep
            parts.append(_rod([x + chord * 0.5, s * y, wing_z - body_r * 0.6],
                              [x - chord * 0.3, s * y, wing_z - body_r * 0.6], body_r * 0.45, 12))
    return parts


def _wings(span: float, chord: float, sweep: float, dihedral: float, root, *, thickness: float) -> list[Mesh]:
    """A pair of swept wings with dihedral, meeting at ``root``."""
    wings = []
    for side in (-1, 1):
        wing = _box([chord, span / 2, thickness], [0, side * span / 4, 0])
        out = np.abs(wing.vertices[:, 1])  # distance from the root along the span
        wing.vertices[:, 0] -= out * sweep
        wing.vertices[:, 2] += out * dihedral
        wing.apply_translation(root)
        wings.append(wing)
    return wings


def _sofa(rng) -> list[Mesh]:
    length, depth = rng.uniform(1.3, 2.2), rng.uniform(0.7, 0.95)
    seat_h, back_h = rng.uniform(0.35, 0.48), rng.uniform(0.25, 0.45)
    legs = rng.uniform(0.0, 0.12) if rng.random() < 0.5 else 0.0
    back_t = rng.uniform(0.12, 0.22)
    parts = [_box([length, depth, seat_h - legs], [0, 0, legs + (seat_h - legs) / 2]),
             _box([length, back_t, back_h], [0, -depth / 2 + back_t / 2, seat_h + back_h / 2])]
    if rng.random() < 0.85:  # arms
        arm_w, arm_h = rng.uniform(0.1, 0.22), rng.uniform(0.12, 0.3)
        parts += [_box([arm_w, depth, arm_h], [s * (length - arm_w) / 2, 0, seat_h + arm_h / 2])
                  for s in (-1, 1)]
    cushions = int(rng.integers(0, 4))
    cushion = length / max(cushions, 1)
    for x in np.linspace(-length / 2, length / 2, cushions + 1)[:-1] + cushion / 2:
        parts.append(_box([cushion * 0.9, depth * 0.7, 0.08], [x, back_t / 2, seat_h + 0.04]))
    if legs > 0:
        parts += _legs(rng, count=4, half_x=length / 2 - 0.08, half_y=depth / 2 - 0.08, top=legs,
                       radius=0.025, sections=_leg_sections(rng))
    return parts


BUILDERS: dict[str, Callable[[np.random.Generator], list[Mesh]]] = {
    "table": _table, "chair": _chair, "stool": _stool, "lamp": _lamp, "mug": _mug,
    "bottle": _bottle, "bowl": _bowl, "airplane": _airplane, "bench": _bench, "shelf": _shelf,
    "vase": _vase, "sofa": _sofa,
}
CLASS_NAMES: tuple[str, ...] = tuple(BUILDERS)


def make_shape(name: str, rng: np.random.Generator) -> Mesh:
    """One random shape of class ``name``, y-up, in metres.

    Args:
        name: one of :data:`CLASS_NAMES`.
        rng: the source of every random choice, so a seed fixes the shape.

    Returns:
        A triangle mesh whose face normals point outwards.
    """
    import trimesh

    if name not in BUILDERS:
        raise ValueError(f"unknown shape class {name!r}; choose one of {', '.join(CLASS_NAMES)}")
    mesh = trimesh.util.concatenate(BUILDERS[name](rng))
    vertices = mesh.vertices.copy()
    # a small smooth deformation: per-axis stretch, a taper and a lean with height
    low, high = vertices[:, 2].min(), vertices[:, 2].max()
    rel = (vertices[:, 2] - low) / max(high - low, 1e-9)
    vertices[:, :2] *= 1 + rng.uniform(-0.12, 0.12) * (rel[:, None] - 0.5)
    vertices[:, :2] += rng.uniform(-0.04, 0.04, size=2) * (high - low) * rel[:, None] ** 2
    vertices *= np.exp(rng.uniform(-STRETCH, STRETCH, size=3))
    mesh = trimesh.Trimesh(vertices, mesh.faces, process=False)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(rng.uniform(-MAX_YAW, MAX_YAW), [0, 0, 1]))
    # z-up (trimesh) -> y-up (ModelNet40 h5): (x, y, z) -> (x, z, -y)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    return mesh
