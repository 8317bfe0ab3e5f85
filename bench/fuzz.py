"""Fuzz the service with real-world odd and broken images that this project did not write.

The corpus is Pillow's own test images (``Tests/images`` of its sdist on PyPI: fuzzer crash,
timeout and OOM reproducers, the bmpsuite's malformed BMPs, truncated files and ~40 formats),
downloaded once with ``pip download`` into ``.cache/fuzz`` unless ``--corpus`` names a folder. Each
file is posted to ``/segment`` as a multipart upload (with its own name and a guessed type), then
as a half-truncated copy, and to gRPC ``Segment``; responses are counted by status. Loopback only
(it starts its own ``bentoml serve`` on 127.0.0.1, or takes ``--url``/``--grpc`` on 127.0.0.1),
bounded (``--time-limit``, a per-request timeout), and it stops the server it started.

    python bench/fuzz.py [--corpus DIR] [--max-files N] [--workers 2] [--time-limit 480]

Prints a table and a final JSON line ``{"bench": "fuzz", ..., "5xx": 0, ...}``: ``5xx`` counts REST
5xx plus gRPC INTERNAL/UNKNOWN/DEADLINE_EXCEEDED; ``lost`` counts requests with no answer.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_server import ROOT, LocalServer  # noqa: E402

PILLOW = "13.0.0"
CACHE = ROOT / ".cache" / "fuzz"
SKIP_SUFFIXES = {".txt", ".html", ".md", ".py", ".json"}
BAD_GRPC = {"INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"}


def pillow_corpus(cache: Path = CACHE) -> Path:
    """Pillow's ``Tests/images`` (downloaded and extracted once)."""
    out = cache / f"pillow-{PILLOW}" / "Tests" / "images"
    if out.is_dir():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"pillow-{PILLOW}.tar.gz"
    if not sdist.is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"pillow=={PILLOW}",
                "-d",
                str(cache),
            ],
            check=True,
        )
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/Tests/images/" in m.name and m.isfile()]
        tar.extractall(cache, members=members, filter="data")
    return out


def corpus_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() not in SKIP_SUFFIXES)


def _loopback(url: str) -> None:
    host = urlparse(url if "//" in url else f"//{url}").hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing a non-loopback target: {url}")


def post_rest(client: httpx.Client, url: str, name: str, data: bytes, headers: dict | None = None) -> str:
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    try:
        r = client.post(
            url + "/segment",
            files={"image": (name, data, ctype)},
            data={"expression": "the odd one"},
            headers=headers or {},
        )
    except httpx.HTTPError as e:
        return f"lost:{type(e).__name__}"
    if r.status_code >= 400:
        doc = r.json()
        assert set(doc) == {"error", "field"}, f"error body of another shape: {r.text[:200]}"
    return str(r.status_code)


def post_grpc(stub, data: bytes, metadata=()) -> str:
    import grpc

    from grounding.serving.proto import grounding_pb2 as pb

    try:
        stub.Segment(pb.SegmentRequest(image=data, expressions=["the odd one"]), timeout=120, metadata=metadata)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def run(
    files: list[Path], url: str, grpc_target: str | None, workers: int = 2, time_limit: float = 480, key: str = ""
) -> dict:
    """Post every file (whole, then half) over REST and gRPC → counts by status, and examples."""
    import grpc

    from grounding.serving.proto import grounding_pb2_grpc as pb_grpc

    _loopback(url)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    rest, grpc_codes, examples = Counter(), Counter(), {}
    deadline = time.monotonic() + time_limit
    channel = (
        grpc.insecure_channel(grpc_target, options=[("grpc.max_send_message_length", 64 * 2**20)])
        if grpc_target
        else None
    )
    stub = pb_grpc.GroundingStub(channel) if channel else None
    done = 0

    def one(path: Path) -> None:
        nonlocal done
        if time.monotonic() > deadline:
            return
        data = path.read_bytes()
        with httpx.Client(timeout=120) as client:
            for name, body in ((path.name, data), ("half-" + path.name, data[: len(data) // 2])):
                status = post_rest(client, url, name, body, headers)
                rest[status] += 1
                examples.setdefault(f"rest {status}", path.name)
        if stub is not None:
            code = post_grpc(stub, data, metadata)
            grpc_codes[code] += 1
            examples.setdefault(f"grpc {code}", path.name)
        done += 1

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))
    if channel is not None:
        channel.close()
    bad_rest = sum(n for s, n in rest.items() if s.isdigit() and int(s) >= 500)
    lost = sum(n for s, n in rest.items() if s.startswith("lost"))
    return {
        "files": done,
        "rest": dict(rest),
        "grpc": dict(grpc_codes),
        "examples": examples,
        "5xx": bad_rest + sum(n for c, n in grpc_codes.items() if c in BAD_GRPC),
        "lost": lost,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="a folder of files (default: Pillow's test images)")
    ap.add_argument("--max-files", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=480)
    ap.add_argument("--model", default="", help="model to serve (default: the service's default)")
    ap.add_argument("--url", help="a running service on 127.0.0.1 instead of starting one")
    ap.add_argument("--grpc", help="its gRPC address (127.0.0.1:PORT)")
    ap.add_argument("--key", default="", help="its API key, if it has one")
    args = ap.parse_args()

    files = corpus_files(args.corpus or pillow_corpus())
    if args.max_files:
        files = files[: args.max_files]
    t0 = time.monotonic()
    if args.url:
        out = run(files, args.url, args.grpc, args.workers, args.time_limit, args.key)
    else:
        env = {"GROUNDING_MODEL": args.model} if args.model else {}
        with tempfile.TemporaryDirectory() as tmp, LocalServer(Path(tmp), **env) as srv:
            out = run(files, srv.url, srv.grpc, args.workers, args.time_limit)
            log = srv.tail(10**8)
            out["log_tracebacks"] = log.count("Traceback")
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(f"\n{'transport':<10} {'status':<20} {'count':>6}  example")
    for transport in ("rest", "grpc"):
        for status, n in sorted(out[transport].items()):
            print(f"{transport:<10} {status:<20} {n:>6}  {out['examples'].get(f'{transport} {status}', '')}")
    print(f"\n{out['files']} files of {len(files)} in {out['seconds']} s; 5xx = {out['5xx']}, lost = {out['lost']}")
    out.pop("examples")
    print(
        json.dumps(
            {"bench": "fuzz", "corpus": f"pillow-{PILLOW} Tests/images" if not args.corpus else str(args.corpus), **out}
        )
    )


if __name__ == "__main__":
    main()
