"""The real `bentoml serve` on 127.0.0.1 (REST) and its in-process gRPC server."""

import base64
import io
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from fixtures import encode, scene, video_bytes
from grounding.pipeline.result import rle_to_mask


def post(server, route, files=None, data=None, json=None):
    return httpx.post(server["url"] + route, files=files, data=data, json=json, timeout=120)


def segment(server, content: bytes, expression="red circle", ctype="image/png", name="img.png", **fields):
    return post(server, "/segment", files={"image": (name, content, ctype)}, data={"expression": expression, **fields})


def test_ready_and_info(server):
    assert httpx.get(server["url"] + "/readyz").status_code == 200
    info = post(server, "/info", json={}).json()
    assert info["model"] == server["model"] and info["segmenter"] == "map-threshold" and info["device"] == "cpu"


def test_segment_multipart_rle_decodes_to_image_size(server):
    r = segment(server, encode(scene(80, 60)))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["image"] == {"width": 80, "height": 60}
    (res,) = doc["results"]
    assert res["box_format"] == "xyxy" and len(res["box"]) == 4 and 0 <= res["score"] <= 1
    mask = rle_to_mask(res["segmentation"])
    assert mask.shape == (60, 80) and res["present"] == bool(mask.any())
    assert 0.0 <= res["presence_score"] <= 1.0
    assert "transformer" in doc["timings_ms"] and "total" in doc["timings_ms"]


def test_answer_ground(server):
    r = post(
        server,
        "/answer_ground",
        files={"image": ("a.png", encode(scene()), "image/png")},
        data={"question": "what is left of the blue square?", "answer": "a red circle", "return_heatmap": "true"},
    )
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["expression"] == "what is left of the blue square? a red circle"
    assert rle_to_mask(res["segmentation"]).shape == (48, 64) and res["heatmap_png"]
    for data, message in [
        ({"answer": "red"}, "missing field: question"),
        ({"question": "what is the?"}, "no content words"),
        ({"question": "what? " + "red " * 600}, "over the limit"),
        ({"question": "what is red?", "views": "local"}, "views"),
    ]:
        bad = post(server, "/answer_ground", files={"image": ("a.png", encode(scene()), "image/png")}, data=data)
        assert bad.status_code == 400 and message in bad.text, bad.text


def test_assembled_views_option(server):
    plain = segment(server, encode(scene()), return_heatmap="true")
    views = segment(server, encode(scene()), return_heatmap="true", views="assembled")
    assert plain.status_code == 200 and views.status_code == 200, views.text
    assert "views" in views.json()["timings_ms"] and "views" not in plain.json()["timings_ms"]
    assert views.json()["results"][0]["heatmap_png"] != plain.json()["results"][0]["heatmap_png"]


def test_segment_json_base64_several_expressions(server):
    b64 = base64.b64encode(encode(scene(), "JPEG")).decode()
    r = post(
        server,
        "/segment",
        json={
            "image_base64": b64,
            "expression": ["red circle", "the blue square"],
            "mask_format": "polygon",
            "return_heatmap": True,
            "return_mask_png": True,
        },
    )
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["expression"] for x in res] == ["red circle", "the blue square"]
    for x in res:
        assert x["segmentation"]["size"] == [48, 64] and x["segmentation"]["polygons"]
        heat = Image.open(io.BytesIO(base64.b64decode(x["heatmap_png"])))
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(x["mask_png"])))) > 0
        assert heat.size == (64, 48) and mask.shape == (48, 64)


def test_mask_png_format_and_switches(server):
    r = segment(server, encode(scene()), mask_format="png", sinks="false", magnets="false", threshold="0.3")
    assert r.status_code == 200, r.text
    seg = r.json()["results"][0]["segmentation"]
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(seg["png"])))).shape == (48, 64)


def test_ground_and_render(server):
    r = post(
        server,
        "/ground",
        files={"image": ("a.png", encode(scene()), "image/png")},
        data={"expression": "blue square", "heatmap_format": "array"},
    )
    assert r.status_code == 200, r.text
    heat = np.array(r.json()["results"][0]["heatmap"]["data"])
    assert heat.shape == (48, 64) and heat.max() == 1.0
    r = post(
        server, "/render", files={"image": ("a.png", encode(scene()), "image/png")}, data={"expression": "blue square"}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/png")
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)


def test_bentoml_sync_client(server, tmp_path):
    import bentoml

    path = tmp_path / "scene.png"
    scene().save(path)
    with bentoml.SyncHTTPClient(server["url"]) as client:
        doc = client.segment(image=path, expression="red circle")
    assert rle_to_mask(doc["results"][0]["segmentation"]).shape == (48, 64)


BOMB = encode(Image.new("L", (3000, 3000)))  # 9 MP of zeros: a few KB on the wire, over the 4 MP limit


@pytest.mark.parametrize(
    "content,ctype,status,message",
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png", 400, "cannot read image"),
        (b"", "image/png", 400, "empty"),
        (b"hello, I am text", "text/plain", 415, "not an image"),
        (b"%PDF-1.4 not really", "application/octet-stream", 415, "not an image"),
        (BOMB, "image/png", 413, "over the limit"),
    ],
)
def test_bad_images_are_4xx_and_server_survives(server, content, ctype, status, message):
    r = segment(server, content, ctype=ctype)
    assert r.status_code == status, r.text
    assert message in r.text
    assert segment(server, encode(scene())).status_code == 200


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"expression": ""}, "empty"),
        ({"expression": "   "}, "empty"),
        ({"expression": "the of and"}, "no content words"),
        ({"expression": "red " * 600}, "over the limit"),
        ({"expression": '["a red circle"' + ', "blue"' * 20 + "]"}, "over the limit"),
        ({"mask_format": "bmp"}, "mask_format"),
        ({"sinks_mode": "nope"}, "sinks_mode"),
        ({"views": "local"}, "views"),
        ({"threshold": "2"}, "threshold"),
    ],
)
def test_bad_fields_are_400(server, fields, message):
    data = {"expression": "red circle", **fields}
    r = post(server, "/segment", files={"image": ("a.png", encode(scene()), "image/png")}, data=data)
    assert r.status_code == 400, r.text
    assert message in r.text


def test_missing_fields_are_400(server):
    r = post(server, "/segment", data={"expression": "red circle"}, files={"other": ("x", b"y", "text/plain")})
    assert r.status_code == 400 and "image" in r.text
    r = post(server, "/segment", files={"image": ("a.png", encode(scene()), "image/png")})
    assert r.status_code == 400 and "expression" in r.text
    r = post(server, "/segment", json={"expression": "red circle", "image_base64": "%%%"})
    assert r.status_code == 400 and "base64" in r.text


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(scene(), "JPEG", exif=exif)


@pytest.mark.parametrize(
    "name,content,ctype,size",
    [
        ("cmyk.jpg", encode(scene().convert("CMYK"), "JPEG"), "image/jpeg", (48, 64)),
        ("gray.jpg", encode(scene().convert("L"), "JPEG"), "image/jpeg", (48, 64)),
        ("pal.png", encode(scene().convert("P")), "image/png", (48, 64)),
        ("rgba.png", encode(scene().convert("RGBA")), "image/png", (48, 64)),
        (
            "i16.png",
            encode(Image.fromarray(np.asarray(scene().convert("L")).astype(np.uint16) * 257)),
            "image/png",
            (48, 64),
        ),
        ("exif.jpg", _exif_rotated(), "image/jpeg", (64, 48)),
        ("noext", encode(scene()), "application/octet-stream", (48, 64)),
    ],
)
def test_image_kinds_served(server, name, content, ctype, size):
    r = segment(server, content, ctype=ctype, name=name)
    assert r.status_code == 200, r.text
    assert rle_to_mask(r.json()["results"][0]["segmentation"]).shape == size


def test_non_ascii_and_overlong_expressions(server):
    r = segment(server, encode(scene()), expression="красный круг ☕ à gauche")
    assert r.status_code == 200, r.text
    r = segment(server, encode(scene()), expression=" ".join(["the red circle left of the blue square"] * 8))
    assert r.status_code == 200, r.text
    assert any("truncated" in w for w in r.json()["results"][0]["warnings"])


def test_grpc_segment_ground_health_reflection(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from grounding.serving.proto import grounding_pb2 as pb
    from grounding.serving.proto import grounding_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server["grpc"]) as ch:
        stub = pb_grpc.GroundingStub(ch)
        r = stub.Segment(
            pb.SegmentRequest(
                image=encode(scene(80, 60)),
                expressions=["red circle", "blue square"],
                options=pb.Options(return_heatmap=True),
            ),
            timeout=60,
        )
        assert (r.image.width, r.image.height) == (80, 60) and len(r.results) == 2
        assert all(0.0 <= res.presence_score <= 1.0 for res in r.results)
        assembled = stub.Segment(
            pb.SegmentRequest(image=encode(scene()), expressions=["red circle"], options=pb.Options(views="assembled")),
            timeout=60,
        )
        assert "views" in assembled.timings_ms
        for res in r.results:
            mask = rle_to_mask({"size": list(res.segmentation.size), "counts": res.segmentation.counts})
            assert mask.shape == (60, 80) and len(res.box) == 4
            assert Image.open(io.BytesIO(res.heatmap_png)).size == (80, 60)
        g = stub.Ground(pb.GroundRequest(image=encode(scene()), expressions=["red circle"]), timeout=60)
        assert list(g.heatmaps[0].size) == [48, 64] and len(g.heatmaps[0].peak) == 2
        for req, msg in [
            (pb.SegmentRequest(image=b"junk", expressions=["red circle"]), "not an image"),
            (pb.SegmentRequest(image=encode(scene()), expressions=["the of"]), "no content words"),
            (pb.SegmentRequest(image=encode(scene())), "expression"),
            (
                pb.SegmentRequest(
                    image=encode(scene()), expressions=["red circle"], options=pb.Options(mask_format="bmp")
                ),
                "mask_format",
            ),
            (
                pb.SegmentRequest(image=encode(scene()), expressions=["red circle"], options=pb.Options(views="local")),
                "views",
            ),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Segment(req, timeout=60)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and msg in err.value.details()
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="grounding.v1.Grounding"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        (resp,) = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
        assert "grounding.v1.Grounding" in names and "grpc.health.v1.Health" in names


def _submit(server, data: bytes, **fields) -> str:
    r = httpx.post(
        server["url"] + "/segment_video/submit", files={"video": ("v.mp4", data, "video/mp4")}, data=fields, timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()["task_id"]


def _wait(server, task_id: str, timeout: float = 120) -> str:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        status = httpx.get(server["url"] + "/segment_video/status", params={"task_id": task_id}).json()["status"]
        if status != "in_progress":
            return status
        time.sleep(0.2)
    raise AssertionError("task did not finish")


def _progress(server, task_id: str) -> dict:
    return post(server, "/video_progress", json={"task_id": task_id}).json()


def test_video_task_end_to_end(server, tmp_path):
    task = _submit(server, video_bytes(tmp_path, 6), expression="the red circle", return_overlay="true")
    assert _wait(server, task) == "completed"
    doc = httpx.get(server["url"] + "/segment_video/get", params={"task_id": task}).json()
    assert [f["frame"] for f in doc["frames"]] == list(range(6)) and 0 <= doc["keyframe"] < 6
    for f in doc["frames"]:
        assert rle_to_mask(f["segmentation"]).shape == (48, 64) and isinstance(f["present"], bool)
    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(base64.b64decode(doc["overlay_mp4_base64"]))
    from grounding.pipeline.frames import read_frames

    assert len(list(read_frames(overlay))) == 6
    assert _progress(server, task) == {"task_id": task, "state": "done", "done": 6, "total": 6, "resumed_from": 0}


def test_video_task_cancel_then_resume(server, tmp_path):
    data = video_bytes(tmp_path, 150)
    task = _submit(server, data, expression="the blue square")
    import time

    deadline = time.time() + 120
    while _progress(server, task).get("done", 0) < 3 and time.time() < deadline:
        time.sleep(0.05)
    cancel = post(server, "/video_cancel", json={"task_id": task}).json()
    assert cancel["cancel_requested"] is True
    assert _wait(server, task) == "completed"
    partial = _progress(server, task)
    assert partial["state"] == "cancelled" and 3 <= partial["done"] < 150, partial
    assert httpx.get(server["url"] + "/segment_video/get", params={"task_id": task}).json()["cancelled"] is True
    again = _submit(server, data, expression="the blue square")  # the same job: resumes
    assert _wait(server, again) == "completed"
    doc = httpx.get(server["url"] + "/segment_video/get", params={"task_id": again}).json()
    assert [f["frame"] for f in doc["frames"]] == list(range(150))
    progress = _progress(server, again)
    assert progress["state"] == "done" and progress["resumed_from"] == partial["done"]


@pytest.mark.parametrize(
    "data,fields,status,field,message",
    [
        (b"definitely not a video" * 20, {"expression": "red circle"}, 400, "video", "cannot read video"),
        (b"", {"expression": "red circle"}, 400, "video", "empty"),
        (None, {"expression": "the of"}, 400, "expression", "no content words"),
        (None, {"expression": ""}, 400, "expression", "empty"),
        (None, {"expression": "red circle", "window": "99"}, 400, "window", "less than or equal to 16"),
        (None, {"expression": "red circle", "threshold": "2"}, 400, "threshold", "less than 1"),
        (None, {"expression": "red circle", "views": "assembled"}, 400, "views", "unknown field"),
        (None, {"expression": "red circle", "maps": "sometimes"}, 400, "maps", "'frame' or 'clip'"),
    ],
)
def test_video_task_bad_input_refused_at_submit(server, tmp_path, data, fields, status, field, message):
    data = video_bytes(tmp_path, 3) if data is None else data
    r = httpx.post(
        server["url"] + "/segment_video/submit", files={"video": ("v.mp4", data, "video/mp4")}, data=fields, timeout=60
    )
    assert r.status_code == status and r.json()["field"] == field and message in r.json()["error"], r.text
    assert post(server, "/video_progress", json={"task_id": "nope"}).status_code == 404


def test_clip_maps_on_an_image_model_fail_with_the_reason(server, tmp_path):
    task = httpx.post(
        server["url"] + "/segment_video/submit",
        files={"video": ("v.mp4", video_bytes(tmp_path, 3), "video/mp4")},
        data={"expression": "red circle", "maps": "clip"},
        timeout=60,
    ).json()["task_id"]
    assert _wait(server, task) == "failed"
    assert "needs a video diffusion transformer" in _progress(server, task)["error"]


def test_propagate_without_a_sam2_segmenter_fails_with_the_reason(server, tmp_path):
    task = _submit(server, video_bytes(tmp_path, 3), expression="red circle", propagate="true")
    assert _wait(server, task) == "failed"
    assert "needs a SAM 2-family segmenter" in _progress(server, task)["error"]
    task = _submit(server, video_bytes(tmp_path, 3), expression="red circle", propagate="true", maps="clip")
    assert _wait(server, task) == "failed"
    assert "maps='clip' cannot be combined" in _progress(server, task)["error"]


def test_video_task_failing_mid_run_says_failed_with_reason(server, tmp_path):
    """A zip whose first frame reads (so it passes the submit check) and whose second does not."""
    import zipfile

    path = tmp_path / "frames.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("000.png", encode(scene()))
        z.writestr("001.png", b"\x89PNG\r\n\x1a\n broken")
    task = httpx.post(
        server["url"] + "/segment_video/submit",
        files={"video": ("frames.zip", path.read_bytes(), "application/zip")},
        data={"expression": "red circle"},
        timeout=60,
    ).json()["task_id"]
    assert _wait(server, task) == "failed"
    r = httpx.get(server["url"] + "/segment_video/get", params={"task_id": task})
    assert "cannot read frame 001.png" in r.json()["error"], r.text
    progress = _progress(server, task)
    assert progress["state"] == "failed" and "cannot read frame 001.png" in progress["error"], progress


ODD_FILES = sorted(
    p
    for p in (Path(__file__).parent / "data" / "pillow-odd").iterdir()
    if p.suffix not in (".md",) and not p.name.startswith("LICENSE")
)


def test_real_world_odd_files_never_5xx(server):
    """205 odd and broken files from Pillow's test suite (tests/data/pillow-odd/README.md), each
    whole and half-truncated over REST and whole over gRPC: 4xx in the one shape or 200, no 5xx,
    no INTERNAL, no request left unanswered; the server answers normally afterwards."""
    from fuzz import run

    assert len(ODD_FILES) == 205
    out = run(ODD_FILES, server["url"], server["grpc"], workers=2, time_limit=300)
    assert out["files"] == len(ODD_FILES), out
    assert out["5xx"] == 0 and out["lost"] == 0, out
    assert set(out["rest"]) <= {"200", "400", "413", "415"}, out["rest"]
    assert set(out["grpc"]) <= {"OK", "INVALID_ARGUMENT"}, out["grpc"]
    assert out["rest"].get("200", 0) > 20 and out["rest"].get("400", 0) > 50, out["rest"]
    assert segment(server, encode(scene())).status_code == 200


def test_instances_over_rest_and_grpc(server):
    """``instances``: "one" reports the mask as one instance; "all" every instance the map shows,
    each with its own segmentation in the requested format, their union the result's mask."""
    from grounding.serving.proto import grounding_pb2 as pb
    from grounding.serving.proto import grounding_pb2_grpc as pb_grpc

    one = segment(server, encode(scene(80, 60)), "red circle")
    assert one.status_code == 200
    res = one.json()["results"][0]
    assert len(res["instances"]) == (1 if rle_to_mask(res["segmentation"]).any() else 0)
    r = segment(server, encode(scene(80, 60)), "all shapes", instances="all", mask_format="polygon")
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    for inst in res["instances"]:
        assert len(inst["box"]) == 4 and 0.0 <= inst["score"] <= 1.0 and inst["segmentation"]["size"] == [60, 80]
        assert "polygons" in inst["segmentation"]
    bad = segment(server, encode(scene()), "red circle", instances="some")
    assert bad.status_code == 400 and bad.json()["field"] == "instances"
    with grpc.insecure_channel(server["grpc"]) as ch:
        stub = pb_grpc.GroundingStub(ch)
        g = stub.Segment(
            pb.SegmentRequest(
                image=encode(scene(80, 60)), expressions=["all shapes"], options=pb.Options(instances="all")
            ),
            timeout=60,
        )
        union = np.zeros((60, 80), bool)
        for inst in g.results[0].instances:
            m = rle_to_mask({"size": list(inst.segmentation.size), "counts": inst.segmentation.counts})
            assert m.any() and len(inst.box) == 4
            union |= m
        whole = rle_to_mask({"size": list(g.results[0].segmentation.size), "counts": g.results[0].segmentation.counts})
        assert np.array_equal(union, whole)
        with pytest.raises(grpc.RpcError) as e:
            stub.Segment(
                pb.SegmentRequest(
                    image=encode(scene()), expressions=["red circle"], options=pb.Options(instances="some")
                ),
                timeout=60,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_proposals_over_rest_and_grpc(server):
    """``proposals``: "regions" masks come from image regions the map chooses (each instance with
    the proposer's score); "concept" without a SAM 3 segmenter and an unknown value are a 400 /
    INVALID_ARGUMENT naming the field; /info says which values this model serves."""
    from grounding.serving.proto import grounding_pb2 as pb
    from grounding.serving.proto import grounding_pb2_grpc as pb_grpc

    info = post(server, "/info", json={}).json()
    assert info["proposals"] == ["none", "regions"] and info["defaults"]["proposals"] == "none"
    r = segment(server, encode(scene(80, 60)), "red circle", proposals="regions")
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["segmenter"] in ("regions", "map-threshold")  # map-threshold: nothing under the map, said so
    if res["segmenter"] == "regions":
        assert all(0.0 <= i["proposal_score"] <= 1.0 for i in res["instances"])
    for value, message in (("concept", "SAM 3"), ("boxes", "proposals")):
        bad = segment(server, encode(scene()), "red circle", proposals=value)
        assert bad.status_code == 400 and bad.json()["field"] == "proposals" and message in bad.json()["error"]
    with grpc.insecure_channel(server["grpc"]) as ch:
        stub = pb_grpc.GroundingStub(ch)
        g = stub.Segment(
            pb.SegmentRequest(
                image=encode(scene(80, 60)), expressions=["red circle"], options=pb.Options(proposals="regions")
            ),
            timeout=60,
        )
        assert g.results[0].segmenter in ("regions", "map-threshold")
        assert all(i.HasField("proposal_score") for i in g.results[0].instances) == (
            g.results[0].segmenter == "regions"
        )
        with pytest.raises(grpc.RpcError) as e:
            stub.Segment(
                pb.SegmentRequest(
                    image=encode(scene()), expressions=["red circle"], options=pb.Options(proposals="concept")
                ),
                timeout=60,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "SAM 3" in e.value.details()
