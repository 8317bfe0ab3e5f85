"""What a new user meets first, on the real `bentoml serve`: a model that cannot load says why in
one line and is not restarted in a loop, a gRPC port another process holds stops the start
loudly, the shipped model says what it knows (its card) and answers a photograph honestly (not
present → no instance, the kept mask drawn as a best guess)."""

import io
import json
import re
import time
from concurrent import futures

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, Server
from fixtures import encode, scene
from grounding.serving.proto import grounding_pb2 as pb
from grounding.serving.proto import grounding_pb2_grpc as pb_grpc
from grounding.serving.settings import load_settings, rest_port

HOPPER = ROOT / "examples" / "hopper.jpg"


def _wait_for_failure(srv: Server, needle: str, timeout: float) -> tuple[float, httpx.Response]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            r = httpx.get(srv.url + "/readyz", timeout=3)
            if r.status_code == 503 and needle in r.text:
                return time.monotonic() - t0, r
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"/readyz never said {needle!r} in {timeout:.0f} s:\n{srv.tail()}")


def _engine_log_lines(srv: Server, needle: str) -> list[str]:
    return [ln for ln in srv.tail(10**7).splitlines() if needle in ln and "grounding-engine" in ln]


@pytest.mark.slow  # 33 s of huggingface_hub's own retries before the line: run by make test-slow and .ci/run
def test_a_model_that_cannot_be_downloaded_says_why_once(tmp_path):
    """HF_HUB_OFFLINE unset (as ``make serve`` leaves it), a hub id with no network here: within 60 s
    /readyz is 503 with one line naming the model and the real cause (the hub cannot be reached —
    not "offline mode"), every call says the same, the log has the line once and the engine worker
    is never restarted."""
    model = "no-such-org/no-such-model"
    srv = Server(model, tmp_path, ready_timeout=0, HF_HUB_OFFLINE=None)
    try:
        took, r = _wait_for_failure(srv, model, 60)
        line = r.json()["error"]
        assert line.startswith(f"cannot load model '{model}': cannot reach the Hugging Face Hub"), line
        assert "offline" not in line.lower() and "\n" not in line
        pid = srv.worker("grounding-engine").pid
        seg = httpx.post(srv.url + "/segment", files={"image": ("a.png", encode(scene()))}, data={"expression": "dog"})
        assert seg.status_code == 503 and seg.json()["error"] == f"grounding engine not started: {line}"
        info = httpx.get(srv.url + "/info")
        assert info.status_code == 503 and line in info.json()["error"]
        time.sleep(10)  # a restart loop restarted every ~9 s
        assert srv.worker("grounding-engine").pid == pid
        assert len(_engine_log_lines(srv, "grounding engine not started")) == 1
        assert srv.tail(10**7).count("Traceback") == 0
        print(f"unloadable model: /readyz said why after {took:.1f} s")
    finally:
        srv.stop()


def test_a_taken_grpc_port_stops_the_start(tmp_path, tiny_flux_dir):
    """Another gRPC server (gRPC's default SO_REUSEPORT, as a second copy of us would have) holds the
    port: the engine never reports ready, says which port in one line, is not restarted, and the
    other server keeps every call (none split off to us)."""
    other = grpc.server(futures.ThreadPoolExecutor(1))
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    try:
        srv = Server(tiny_flux_dir, tmp_path, ready_timeout=0, GROUNDING_GRPC_PORT=str(port))
        try:
            _, r = _wait_for_failure(srv, f"gRPC port 127.0.0.1:{port}", 120)
            assert r.json()["error"] == (
                f"gRPC port 127.0.0.1:{port} is already in use by another process; set "
                "GROUNDING_GRPC_PORT to a free port (0 turns gRPC off)"
            )
            pid = srv.worker("grounding-engine").pid
            # every call on that port reaches the other server (which has no Grounding service)
            stub = pb_grpc.GroundingStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            for _ in range(6):
                with pytest.raises(grpc.RpcError) as e:
                    stub.Segment(pb.SegmentRequest(image=encode(scene()), expressions=["x"]), timeout=5)
                assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
            time.sleep(3)
            assert srv.worker("grounding-engine").pid == pid
            assert len(_engine_log_lines(srv, "is already in use")) == 1
        finally:
            srv.stop()
    finally:
        other.stop(0)


def test_grpc_port_follows_the_rest_port():
    """Unset: the REST port + 1, read from BentoML's service map in a worker, else $PORT, else 3000."""
    runner_map = json.dumps({"grounding": "http://127.0.0.1:4123", "grounding-engine": "tcp://127.0.0.1:5555"})
    assert rest_port({"BENTOML_RUNNER_MAP": runner_map, "PORT": "9"}) == 4123
    assert load_settings({"BENTOML_RUNNER_MAP": runner_map}).grpc_port == 4124
    assert load_settings({"PORT": "8080"}).grpc_port == 8081
    assert load_settings({}).grpc_port == 3001
    assert load_settings({"PORT": "8080", "GROUNDING_GRPC_PORT": "0"}).grpc_port == 0
    s = load_settings({"GROUNDING_GRPC_PORT": "7000", "GROUNDING_WORKERS": "3"})
    assert [s.worker_grpc_port(i) for i in (1, 2, 3)] == [7000, 7001, 7002]  # never a shared port


def test_info_is_the_model_card(demo_server):
    """GET /info (and POST, kept) returns what the model knows and how it was calibrated."""
    r = httpx.get(demo_server.url + "/info")
    assert r.status_code == 200, r.text
    info = r.json()
    assert httpx.post(demo_server.url + "/info", json={}).json() == info
    card = info["card"]
    assert card["calibrated"] is True and "shapes world" in card["domain"] and "photographs" in card["domain"]
    assert len(card["calibration"]) == 3 and card["summary"].startswith("the project's synthetic shapes world")
    assert info["defaults"]["threshold"] == 0.4 and info["defaults"]["resolution"] == 64
    assert info["grpc_port"] == demo_server.port + 1


@pytest.mark.parametrize("mode", ["one", "all"])
def test_a_photograph_is_not_present_and_has_no_instance(demo_server, mode):
    """A real photograph on the shapes model: present false, no instance in any mode, over REST and
    gRPC; in "one" mode the mask stays, marked as a best guess."""
    data = HOPPER.read_bytes()
    r = httpx.post(
        demo_server.url + "/segment",
        files={"image": ("hopper.jpg", data)},
        data={"expression": "the woman in uniform", "instances": mode},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["present"] is False and res["instances"] == [] and res["presence_score"] < 0.5
    assert res["best_guess"] is (mode == "one")  # "all" mode keeps no mask at all when nothing is there
    stub = pb_grpc.GroundingStub(grpc.insecure_channel(demo_server.grpc))
    reply = stub.Segment(
        pb.SegmentRequest(image=data, expressions=["the woman in uniform"], options=pb.Options(instances=mode)),
        timeout=60,
    )
    assert not reply.results[0].present and len(reply.results[0].instances) == 0
    assert reply.results[0].best_guess is (mode == "one")


def test_render_draws_a_best_guess_as_an_outline(demo_server):
    """/render: a found object is tinted green with a red box; a best guess is neither (dashed grey
    outline), so nobody reads it as a find."""

    def render(image: bytes, name: str, expression: str) -> np.ndarray:
        r = httpx.post(
            demo_server.url + "/render", files={"image": (name, image)}, data={"expression": expression}, timeout=60
        )
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)

    def tinted(arr: np.ndarray) -> int:  # strongly green pixels: the found-object tint
        return int(((arr[..., 1] > arr[..., 0] + 60) & (arr[..., 1] > arr[..., 2] + 60)).sum())

    def boxed(arr: np.ndarray) -> int:  # the box's pure red
        return int(((arr[..., 0] > 240) & (arr[..., 1] < 60) & (arr[..., 2] < 60)).sum())

    found = render((ROOT / "examples" / "shapes-1.png").read_bytes(), "s.png", "the red triangle")
    guess = render(HOPPER.read_bytes(), "hopper.jpg", "the woman in uniform")
    photo = np.asarray(Image.open(HOPPER).convert("RGB")).astype(int)
    assert boxed(found) > 50 and boxed(guess) == 0
    assert tinted(guess) <= tinted(photo) + 5
    grey = (np.abs(guess - 200).max(axis=-1) < 12) & ~(np.abs(photo - 200).max(axis=-1) < 12)
    assert grey.sum() > 20  # the dashed outline


def test_expression_as_a_json_string_is_kept_as_typed(demo_server):
    """BentoML's client JSON-encodes multipart fields: '"the red triangle"' is one expression, no quotes."""
    r = httpx.post(
        demo_server.url + "/segment",
        files={"image": ("s.png", (ROOT / "examples" / "shapes-1.png").read_bytes())},
        data={"expression": '"the red triangle"'},
        timeout=60,
    )
    assert r.json()["results"][0]["expression"] == "the red triangle"
    plain = httpx.post(
        demo_server.url + "/segment",
        files={"image": ("s.png", (ROOT / "examples" / "shapes-1.png").read_bytes())},
        data={"expression": "the red triangle"},
        timeout=60,
    )
    assert plain.json()["results"][0]["score"] == r.json()["results"][0]["score"]
    assert re.fullmatch(r"the red triangle", plain.json()["results"][0]["expression"])


def _raised(inner: BaseException, outer: BaseException) -> BaseException:
    """``outer`` raised while handling ``inner``, as diffusers wraps the hub's errors."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer
    except BaseException as e:
        return e


def test_load_error_names_the_real_cause():
    """The causes behind diffusers' last word ("does not appear to have a file named
    model_index.json"), each as one line with what to do; real exceptions where they can be had
    here (offline mode, not a pipeline, a bad id), the hub's own classes for the others."""
    import httpx2
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from grounding.backends import pipeline_index
    from grounding.backends.load_errors import load_error_message

    def real(model):
        with pytest.raises(Exception) as e:
            pipeline_index(model)
        return load_error_message(model, e.value)

    assert "HF_HUB_OFFLINE=1 forbids downloads" in real("some-org/some-model")  # conftest sets offline mode
    assert real(ROOT / "examples").endswith("has no model_index.json: not a diffusers pipeline folder")
    assert real("./no/such/folder").endswith("neither a local folder nor a valid Hugging Face repository id")
    response = httpx2.Response(403, request=httpx2.Request("GET", "https://huggingface.co/x/y/resolve/main/m.json"))
    last = OSError("x/y does not appear to have a file named model_index.json.")
    gated = load_error_message("x/y", _raised(GatedRepoError("gated", response=response), last))
    assert gated.startswith("cannot load model 'x/y': a gated repository") and "HF_TOKEN" in gated
    missing = load_error_message("x/y", _raised(RepositoryNotFoundError("404", response=response), last))
    assert "no such repository" in missing
    oom = load_error_message("m", _raised(MemoryError("cannot allocate 24 GiB"), RuntimeError("loading failed")))
    assert "out of memory" in oom and "GROUNDING_QUANTIZATION" in oom
    for line in (gated, missing, oom):
        assert "\n" not in line
