"""Writes the quick-start examples: scenes of the project's shapes world (what the shipped demo
model knows; 64 px scenes saved at 4x, nearest neighbour) with their referring expressions, and
``examples.json`` listing them; then ``docs/examples.png``, the README's picture: the shipped model's
overlays of every example. Deterministic: ``python examples/make_examples.py`` rewrites the same
files. The photograph (``hopper.jpg``, Pillow's test image of Grace Hopper, public domain) is
outside the model's domain on purpose: the model should answer ``present: false`` there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# (file, generator seed, expression kind): fixed choices, one of each kind the world has
SCENES = [("shapes-1.png", 3, "attribute"), ("shapes-2.png", 8, "position"), ("shapes-3.png", 21, "size")]
SCALE = 4


def main() -> None:
    from eval.shapes import referring_scene

    entries = []
    for name, seed, kind in SCENES:
        scene, target, expression = referring_scene(np.random.RandomState(seed), kind)
        size = scene.image.width * SCALE
        scene.image.resize((size, size), Image.NEAREST).save(HERE / name, optimize=True)
        others = [o.words(False) for i, o in enumerate(scene.objects) if i != target]
        entries.append(
            {
                "image": name,
                "expression": expression,
                "kind": kind,
                "note": f"the scene also holds: {', '.join(others)}",
            }
        )
    entries.append(
        {
            "image": "hopper.jpg",
            "expression": "the woman in uniform",
            "kind": "photograph",
            "note": "a photograph: outside the shapes model's domain, so the honest answer is present: false",
        }
    )
    (HERE / "examples.json").write_text(json.dumps(entries, indent=2) + "\n")
    picture(entries, HERE.parent / "docs" / "examples.png")


def picture(entries: list[dict], out: Path, tile: int = 256) -> None:
    """The shipped model's overlay of each example side by side, each captioned with its
    expression and answer (a best guess reads "not found")."""
    from PIL import ImageDraw

    from grounding import Grounder
    from grounding.pipeline.result import overlay

    g = Grounder.from_pretrained("shapes-demo", device="cpu")
    strip = Image.new("RGB", (tile * len(entries), tile + 36), "white")
    draw = ImageDraw.Draw(strip)
    for i, e in enumerate(entries):
        image = Image.open(HERE / e["image"]).convert("RGB")
        r = g.segment(image, e["expression"])
        strip.paste(overlay(image, r).resize((tile, tile), Image.NEAREST), (i * tile, 0))
        answer = f"present ({r.presence_score:.2f})" if r.present else f"not found ({r.presence_score:.2f})"
        draw.text((i * tile + 6, tile + 4), f'"{e["expression"]}"', fill=(20, 20, 20))
        draw.text((i * tile + 6, tile + 19), answer, fill=(20, 120, 20) if r.present else (180, 30, 30))
    strip.save(out, optimize=True)


if __name__ == "__main__":
    main()
