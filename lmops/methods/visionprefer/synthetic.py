"""A synthetic VisionPrefer: images drawn by code, with a planted preference rule a judge can read back
from the pixels. Used by the offline demo and the tests (nothing is downloaded).

A prompt asks for a coloured shape (``"a red circle"``). Four "generators" draw it with different error
rates: a wrong colour, a wrong shape, the shape off-centre, background noise, and (rarely) a black
"unsafe" mark. The planted rule, one integer score in 1..5 per aspect (:func:`planted_scores`):

- prompt-following: ``1 + 2 * [colour right] + 2 * [shape right]``;
- aesthetic: 5 if the shape is centred (centroid within 8% of the side from the centre), 3 if within
  18%, else 1;
- fidelity: 5 for a clean background (noise std < 6), 3 for moderate noise (< 20), else 1;
- harmlessness: 1 with the black mark, else 5.

:func:`measure` recovers these attributes from an image file (median filter, colour mask, largest
connected component, fill ratio of its bounding box for the shape), so the scripted judge
(:mod:`~lmops.methods.visionprefer.scripted`) scores what is in the picture, not hidden labels.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data import ImageEntry, PromptRecord

__all__ = [
    "COLORS",
    "GENERATORS",
    "SHAPES",
    "Drawing",
    "GeneratorSpec",
    "color_reward",
    "draw",
    "drawing_attributes",
    "make_synthetic_dataset",
    "measure",
    "planted_scores",
    "prompt_for",
    "sample_drawing",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 40),
    "blue": (40, 60, 220),
    "yellow": (230, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND = (200, 200, 200)
IMAGE_SIZE = 32
# the shape's fill ratio of its bounding box: circle pi/4, square 1, triangle 1/2 (thresholds between)
_FILL_SQUARE, _FILL_CIRCLE = 0.9, 0.64


@dataclass(frozen=True)
class Drawing:
    """What an image shows: ``color``, ``shape``, centre offset ``(dx, dy)`` in pixels, ``size`` (side or
    diameter, pixels), background ``noise`` std, and whether the black ``mark`` is drawn."""

    color: str
    shape: str
    dx: float = 0.0
    dy: float = 0.0
    size: float = 14.0
    noise: float = 0.0
    mark: bool = False


@dataclass(frozen=True)
class GeneratorSpec:
    """A synthetic "text-to-image model": its error rates. ``offset``: std of the centre offset as a
    fraction of the side; ``noise``: candidate noise stds, one drawn per image."""

    name: str
    p_color_error: float
    p_shape_error: float
    offset: float
    noise: tuple[float, ...]
    p_mark: float


# four generators, as the paper's four T2I models; quality from worst to best. Shape errors are rarer than
# colour errors: a shape is a finer cue than a colour for the demo's tiny ViT (8x8 patches of 32x32)
GENERATORS: tuple[GeneratorSpec, ...] = (
    GeneratorSpec("gen-a", 0.5, 0.2, 0.22, (0.0, 12.0, 30.0, 30.0), 0.15),
    GeneratorSpec("gen-b", 0.35, 0.15, 0.15, (0.0, 12.0, 30.0), 0.1),
    GeneratorSpec("gen-c", 0.25, 0.1, 0.12, (0.0, 0.0, 12.0, 30.0), 0.05),
    GeneratorSpec("gen-d", 0.15, 0.05, 0.08, (0.0, 0.0, 12.0), 0.03),
)


def prompt_for(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def draw(d: Drawing, size: int = IMAGE_SIZE, seed: int = 0):
    """The image of ``d`` as a PIL RGB image of ``size`` x ``size``."""
    from PIL import Image, ImageDraw

    if d.color not in COLORS or d.shape not in SHAPES:
        raise ValueError(f"drawing: unknown colour {d.color!r} or shape {d.shape!r}")
    img = Image.new("RGB", (size, size), BACKGROUND)
    g = ImageDraw.Draw(img)
    cx, cy, r = size / 2 + d.dx, size / 2 + d.dy, d.size / 2
    box = [cx - r, cy - r, cx + r, cy + r]
    fill = COLORS[d.color]
    if d.shape == "circle":
        g.ellipse(box, fill=fill)
    elif d.shape == "square":
        g.rectangle(box, fill=fill)
    else:
        # a right triangle (fill ratio 1/2) placed so that its centroid, not its box, is at (cx, cy)
        x0, y0 = cx + r / 3, cy - r / 3
        g.polygon([(x0 - r, y0 + r), (x0 + r, y0 + r), (x0 - r, y0 - r)], fill=fill)
    if d.mark:  # a black frame on the image's edge (the shape keeps a 2-pixel margin, so they never touch)
        g.rectangle([0, 0, size - 1, size - 1], outline=(0, 0, 0), width=1)
    arr = np.asarray(img, dtype=np.float32)
    if d.noise > 0:
        rng = np.random.default_rng(seed)
        arr = arr + rng.normal(0.0, d.noise, arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def sample_drawing(
    gen: GeneratorSpec, color: str, shape: str, rng: np.random.Generator, size: int = IMAGE_SIZE
) -> Drawing:
    """What ``gen`` draws for ``"a {color} {shape}"`` (its errors drawn from ``rng``)."""
    if rng.random() < gen.p_color_error:
        color = str(rng.choice([c for c in COLORS if c != color]))
    if rng.random() < gen.p_shape_error:
        shape = str(rng.choice([s for s in SHAPES if s != shape]))
    side = float(rng.uniform(0.38, 0.5) * size)
    limit = size / 2 - side / 2 - side / 6 - 2  # keep the shape (a triangle is drawn side/6 off its box) inside
    dx, dy = (float(np.clip(v, -limit, limit)) for v in rng.normal(0.0, gen.offset * size, 2))
    noise = float(rng.choice(gen.noise))
    return Drawing(color, shape, dx, dy, side, noise, bool(rng.random() < gen.p_mark))


# -- reading an image back -----------------------------------------------------------------------------
def measure(image: Any) -> dict[str, Any]:
    """The planted attributes read from an image (a path or a PIL image): ``color`` (nearest palette
    colour of the shape, ``None`` if no shape), ``shape``, ``offset`` (centroid distance from the centre
    as a fraction of the side), ``noise`` (background noise std estimate), ``mark`` (black pixels)."""
    from PIL import Image
    from scipy import ndimage

    img = Image.open(image) if isinstance(image, (str, os.PathLike)) else image
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    side = arr.shape[0]
    smooth = ndimage.median_filter(arr, size=(3, 3, 1))
    dark = (arr.max(axis=2) < 60) & (smooth.max(axis=2) < 110)
    diff = np.abs(smooth - np.array(BACKGROUND, dtype=np.float32)).sum(axis=2)
    mask = (diff > 120) & ~ndimage.binary_dilation(dark)
    labels, count = ndimage.label(mask)
    background = ~ndimage.binary_dilation(mask | dark, iterations=2)
    noise = float((arr - smooth)[background].std()) * 1.2 if background.any() else 0.0  # median residue underestimates
    out: dict[str, Any] = {"color": None, "shape": None, "offset": 1.0, "noise": noise, "mark": int(dark.sum()) >= 6}
    if count == 0:
        return out
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    blob = labels == (int(np.argmax(sizes)) + 1)
    if blob.sum() < 6:
        return out
    mean = smooth[blob].mean(axis=0)
    out["color"] = min(COLORS, key=lambda c: float(((np.array(COLORS[c]) - mean) ** 2).sum()))
    ys, xs = np.nonzero(blob)
    fill = blob.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    out["shape"] = "square" if fill > _FILL_SQUARE else "circle" if fill > _FILL_CIRCLE else "triangle"
    c = (side - 1) / 2
    out["offset"] = float(np.hypot(ys.mean() - c, xs.mean() - c) / side)
    return out


def planted_scores(attrs: dict[str, Any], prompt: str) -> dict[str, int]:
    """The planted rule (module docstring): 1..5 per aspect from measured (or drawn) attributes and the prompt."""
    words = prompt.lower().split()
    color_ok = attrs.get("color") is not None and attrs["color"] in words
    shape_ok = attrs.get("shape") is not None and attrs["shape"] in words
    offset, noise = attrs.get("offset", 1.0), attrs.get("noise", 0.0)
    return {
        "prompt_following": 1 + 2 * int(color_ok) + 2 * int(shape_ok),
        "aesthetic": 5 if offset < 0.08 else 3 if offset < 0.18 else 1,
        "fidelity": 5 if noise < 6 else 3 if noise < 20 else 1,
        "harmlessness": 1 if attrs.get("mark") else 5,
    }


def drawing_attributes(d: Drawing, size: int = IMAGE_SIZE) -> dict[str, Any]:
    """The attributes :func:`measure` should read from ``draw(d)`` (the ground truth of the rule)."""
    offset = float(np.hypot(d.dx, d.dy) / size)
    return {"color": d.color, "shape": d.shape, "offset": offset, "noise": d.noise, "mark": d.mark}


# -- a whole dataset -----------------------------------------------------------------------------------
def make_synthetic_dataset(
    root: str | os.PathLike,
    n_prompts: int,
    *,
    generators: Sequence[GeneratorSpec] = GENERATORS,
    seed: int = 0,
    size: int = IMAGE_SIZE,
    id_prefix: str = "p",
) -> list[PromptRecord]:
    """Draw ``n_prompts`` prompts x ``len(generators)`` images as PNGs under ``root/images`` and return the
    (unannotated) records; paths are absolute. Prompts cycle through colour x shape in a seeded order."""
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts: expected a positive int, got {n_prompts!r}")
    if not generators:
        raise ValueError("generators: expected at least one GeneratorSpec")
    rng = np.random.default_rng(seed)
    folder = Path(root) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    combos = [(c, s) for c in COLORS for s in SHAPES]
    records = []
    for i in range(n_prompts):
        if i % len(combos) == 0:
            order = rng.permutation(len(combos))
        color, shape = combos[int(order[i % len(combos)])]
        pid = f"{id_prefix}{i}"
        images = []
        for gen in generators:
            d = sample_drawing(gen, color, shape, rng, size)
            iid = f"{pid}-{gen.name}"
            path = folder / f"{iid}.png"
            draw(d, size, seed=_seed(seed, iid)).save(path)
            images.append(ImageEntry(iid, str(path.absolute()), gen.name))
        records.append(PromptRecord(pid, prompt_for(color, shape), images))
    return records


def color_reward(images: Any, prompts: Sequence[str]) -> Any:
    """A planted, differentiable reward for aligning a generator: how close the central half of each
    image is to the colour its prompt names, ``-mean((pixel - colour)^2)`` over the centre, in [-1, 0]
    (``images`` (B, 3, H, W) in [0, 1]; a prompt naming no known colour targets the background grey).
    Returns a ``(B,)`` tensor."""
    import torch

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError("images: expected a (B, 3, H, W) tensor in [0, 1]")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"prompts: expected one per image ({images.shape[0]}), got {len(prompts)}")
    targets = []
    for p in prompts:
        name = next((c for c in COLORS if c in p.lower().split()), None)
        targets.append(COLORS[name] if name else BACKGROUND)
    target = torch.tensor(targets, dtype=images.dtype, device=images.device).view(-1, 3, 1, 1) / 255.0
    h, w = images.shape[-2:]
    centre = images[:, :, h // 4 : h - h // 4, w // 4 : w - w // 4]
    return -((centre - target) ** 2).mean(dim=(1, 2, 3))
