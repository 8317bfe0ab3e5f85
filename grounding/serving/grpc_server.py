"""gRPC endpoint over the same ``Engine`` as the REST service (same process), with the standard
health service and server reflection.

Binds ``Settings.grpc_host`` (the REST host under ``make serve``; 127.0.0.1 by default) without
``SO_REUSEPORT`` (a port held by another process is an error, never a shared port), over TLS
when ``grpc_tls_cert``/``grpc_tls_key`` are set. With an API key, every call but the health
service needs ``authorization: Bearer <key>`` metadata (UNAUTHENTICATED otherwise), as REST does.
"""

from __future__ import annotations

import hmac
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .documents import heatmap_u8, merged_timings, png_bytes, result_doc
from .engine import Engine, jobs_for, raise_first_error
from .proto import grounding_pb2 as pb
from .proto import grounding_pb2_grpc as pb_grpc
from .requests import prepare
from .schema import ENDPOINT_OPTIONS, RequestError
from .settings import Settings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Grounding"].full_name


def _options(msg: pb.Options, endpoint: str) -> dict:
    """The schema's options of ``endpoint`` read off ``grounding.v1.Options`` by name: fields with
    presence when set, plain proto3 fields when not at their zero value."""
    values = {}
    for name in ENDPOINT_OPTIONS[endpoint]:
        fd = msg.DESCRIPTOR.fields_by_name.get(name)
        if fd is None:  # heatmap_format: gRPC heatmaps are always PNG bytes
            continue
        if msg.HasField(name) if fd.has_presence else getattr(msg, name) != fd.default_value:
            values[name] = getattr(msg, name)
    return values


def segmentation_pb(seg: dict):
    """A ``documents.result_doc`` segmentation (RLE, polygons or PNG bytes) as its proto message."""
    return pb.Segmentation(
        size=seg["size"],
        counts=seg.get("counts", ""),
        polygons=[pb.Polygon(xy=p) for p in seg.get("polygons", [])],
        png=seg.get("png", b""),
    )


class GroundingServicer(pb_grpc.GroundingServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    def _run(self, request, context, use_segmenter: bool):
        t0 = time.perf_counter()
        try:
            endpoint = "segment" if use_segmenter else "ground"
            image, opts, exprs = prepare(
                self.engine.settings,
                request.image,
                list(request.expressions) or None,
                _options(request.options, endpoint),
                endpoint=endpoint,
            )
            results = raise_first_error(self.engine.run(jobs_for(image, exprs, opts, use_segmenter)))
        except RequestError as e:
            code = {404: grpc.StatusCode.NOT_FOUND, 503: grpc.StatusCode.UNAVAILABLE}.get(
                e.status, grpc.StatusCode.INVALID_ARGUMENT
            )
            context.abort(code, str(e))
        return image, opts, results, merged_timings(results, t0)

    def Segment(self, request, context):
        """``grounding.v1.Grounding/Segment``: masks, boxes, scores (and heatmaps when asked) per expression."""
        image, opts, results, timings = self._run(request, context, True)
        out = []
        for r in results:
            d = result_doc(r, opts, binary=True)
            segmentation = segmentation_pb(d["segmentation"])
            out.append(
                pb.Result(
                    expression=d["expression"],
                    box=d["box"],
                    box_format=d["box_format"],
                    score=d["score"],
                    segmentation=segmentation,
                    present=d["present"],
                    presence_score=d["presence_score"],
                    best_guess=d["best_guess"],
                    segmenter=d["segmenter"],
                    warnings=d["warnings"],
                    points=[pb.Point(x=p[0], y=p[1], label=lab) for p, lab in zip(d["points"], d["point_labels"])],
                    mask_png=d.get("mask_png", b""),
                    heatmap_png=d.get("heatmap_png", b""),
                    instances=[
                        pb.Instance(
                            box=i["box"],
                            score=i["score"],
                            segmentation=segmentation_pb(i["segmentation"]),
                            proposal_score=i["proposal_score"],
                        )
                        for i in d["instances"]
                    ],
                )
            )
        return pb.SegmentResponse(
            image=pb.ImageInfo(width=image.width, height=image.height), results=out, timings_ms=timings
        )

    def Ground(self, request, context):
        """``grounding.v1.Grounding/Ground``: one heatmap per expression, with its peak and presence."""
        image, opts, results, timings = self._run(request, context, False)
        heatmaps = [
            pb.Heatmap(
                expression=r.expression,
                size=list(r.heatmap.shape),
                png=png_bytes(heatmap_u8(r)),
                peak=r.points[0].tolist() if len(r.points) else [],
                warnings=r.warnings,
            )
            for r in results
        ]
        return pb.GroundResponse(
            image=pb.ImageInfo(width=image.width, height=image.height), heatmaps=heatmaps, timings_ms=timings
        )


class _ApiKey(grpc.ServerInterceptor):
    """UNAUTHENTICATED unless ``authorization: Bearer <key>`` is in the call's metadata; the health
    service stays open (as REST's probes do)."""

    def __init__(self, key: str):
        self.key = key.encode()

        def deny(request, context):
            """The handler a call without the right API key gets: UNAUTHENTICATED, saying what to send."""
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key: send metadata 'authorization: Bearer <key>'"
            )

        self._deny = deny

    def intercept_service(self, continuation, details):
        """Let health checks and calls bearing the API key through; deny the rest."""
        if details.method.startswith(f"/{health.SERVICE_NAME}/"):
            return continuation(details)
        auth = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._deny)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(lambda it, ctx: self._deny(None, ctx))
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._deny)
        return grpc.stream_unary_rpc_method_handler(lambda it, ctx: self._deny(None, ctx))


def start_grpc_server(
    engine: Engine, settings: Settings, port: int | None = None, workers: int = 4
) -> tuple[grpc.Server, int]:
    """Start serving on ``settings.grpc_host:port`` (default ``settings.grpc_port``); returns the
    server and the bound port (``port=0`` binds a free port — callers decide whether to start)."""
    port = settings.grpc_port if port is None else port
    key = settings.key()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        interceptors=[_ApiKey(key)] if key else [],
        options=[
            ("grpc.max_receive_message_length", 64 * 2**20),
            ("grpc.max_send_message_length", 64 * 2**20),
            ("grpc.so_reuseport", 0),
        ],
    )  # a port another server holds is a bind error
    pb_grpc.add_GroundingServicer_to_server(GroundingServicer(engine), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.grpc_host}:{port}"
    if bool(settings.grpc_tls_cert) != bool(settings.grpc_tls_key):
        raise ValueError("gRPC TLS needs both GROUNDING_GRPC_TLS_CERT and GROUNDING_GRPC_TLS_KEY")
    if settings.grpc_tls_cert:
        creds = grpc.ssl_server_credentials(
            [(Path(settings.grpc_tls_key).read_bytes(), Path(settings.grpc_tls_cert).read_bytes())]
        )
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC port {address}")
    server.start()
    return server, bound
