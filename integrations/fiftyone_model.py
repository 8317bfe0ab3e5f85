"""A FiftyOne model backed by the grounding service's REST API: referring expressions in a sample
field → ``fo.Detections`` with instance masks.

    import fiftyone as fo
    from integrations.fiftyone_model import GroundingModel

    dataset.apply_model(GroundingModel("http://127.0.0.1:3000"), label_field="grounded",
                        prompt_field="expression")

``prompt_field`` names a sample field holding the expression: a string, a list of strings, or a
``Classification`` / ``Classifications`` (their labels). Each expression is sent to ``/segment``
with ``instances="all"`` and PNG masks; every instance becomes a ``Detection`` labelled with the
expression — relative ``[x, y, w, h]`` box, the mask cropped to it, the instance's map score as
``confidence`` and the result's ``presence_score``. An expression whose referent is not there
(``present: false``) gives no detection. Only this file imports FiftyOne; it needs ``httpx``,
``numpy`` and ``Pillow`` besides (all FiftyOne's own dependencies), not the service's packages.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import fiftyone.core.labels as fol
import fiftyone.core.models as fom
import httpx
import numpy as np
from PIL import Image


class GroundingModel(fom.Model, fom.SamplesMixin):
    """``apply_model(GroundingModel(url, api_key=None), label_field=..., prompt_field=...)``."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0):
        fom.SamplesMixin.__init__(self)
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self._preprocess = False

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    def expressions(self, sample: Any) -> list[str]:
        """The expressions in the sample's prompt field (``needs_fields["prompt_field"]``)."""
        name = (self.needs_fields or {}).get("prompt_field")
        if not name:
            raise ValueError("GroundingModel needs prompt_field=<field holding the expression>")
        value = sample[name] if sample is not None else None
        if isinstance(value, fol.Classification):
            value = value.label
        elif isinstance(value, fol.Classifications):
            value = [c.label for c in value.classifications]
        if isinstance(value, str):
            value = [value]
        return [v for v in (value or []) if isinstance(v, str) and v.strip()]

    def predict(self, arg: Any, sample: Any = None) -> fol.Detections:
        """``arg``: the image (uint8 HWC array, or a path); ``sample``: its sample (the prompt)."""
        exprs = self.expressions(sample)
        if not exprs:
            return fol.Detections()
        if isinstance(arg, (str, Path)):
            data = Path(arg).read_bytes()
        else:
            buf = io.BytesIO()
            Image.fromarray(np.asarray(arg, dtype=np.uint8)).save(buf, format="PNG")
            data = buf.getvalue()
        files = {"image": ("image.png", data, "image/png")}
        fields = {"expression": exprs, "instances": "all", "mask_format": "png"}  # repeated expression fields
        resp = httpx.post(f"{self.url}/segment", files=files, data=fields, headers=self.headers, timeout=self.timeout)
        if resp.status_code != 200:
            raise RuntimeError(f"grounding service answered {resp.status_code}: {resp.text[:300]}")
        doc = resp.json()
        width, height = doc["image"]["width"], doc["image"]["height"]
        found = []
        for result in doc["results"]:
            for inst in result["instances"] if result["present"] else []:
                mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(inst["segmentation"]["png"])))) > 0
                x0, y0, x1, y1 = (int(round(v)) for v in inst["box"])
                found.append(
                    fol.Detection(
                        label=result["expression"],
                        bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
                        mask=mask[y0:y1, x0:x1],
                        confidence=float(inst["score"]),
                        presence_score=float(result["presence_score"]),
                    )
                )
        return fol.Detections(detections=found)
