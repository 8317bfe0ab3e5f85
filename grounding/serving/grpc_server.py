"""gRPC endpoint over the same ``Engine`` as the REST service (same process), with the standard
health service and server reflection."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .proto import grounding_pb2 as pb
from .proto import grounding_pb2_grpc as pb_grpc
from .documents import heatmap_u8, merged_timings, png_bytes, result_doc
from .engine import Engine, jobs_for, raise_first_error
from .requests import prepare
from .schema import ENDPOINT_OPTIONS, RequestError

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Grounding"].full_name


def _options(msg: pb.Options, endpoint: str) -> dict:
    """The schema's options of ``endpoint`` read off ``grounding.v1.Options`` by name: fields with
    presence when set, plain proto3 fields when not at their zero value."""
    values = {}
    for name in ENDPOINT_OPTIONS[endpoint]:
        fd = msg.DESCRIPTOR.fields_by_name.get(name)
        if fd is None:  # heatmap_format: gRPC heatmaps are always PNG bytes
            continue
        if (msg.HasField(name) if fd.has_presence else getattr(msg, name) != fd.default_value):
            values[name] = getattr(msg, name)
    return values


class GroundingServicer(pb_grpc.GroundingServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    def _run(self, request, context, use_segmenter: bool):
        t0 = time.perf_counter()
        try:
            endpoint = "segment" if use_segmenter else "ground"
            image, opts, exprs = prepare(self.engine.settings, request.image, list(request.expressions) or None,
                                         _options(request.options, endpoint), endpoint=endpoint)
            results = raise_first_error(self.engine.run(jobs_for(image, exprs, opts, use_segmenter)))
        except RequestError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return image, opts, results, merged_timings(results, t0)

    def Segment(self, request, context):
        image, opts, results, timings = self._run(request, context, True)
        out = []
        for r in results:
            d = result_doc(r, opts, binary=True)
            seg = d["segmentation"]
            segmentation = pb.Segmentation(size=seg["size"], counts=seg.get("counts", ""),
                                           polygons=[pb.Polygon(xy=p) for p in seg.get("polygons", [])],
                                           png=seg.get("png", b""))
            out.append(pb.Result(
                expression=d["expression"], box=d["box"], box_format=d["box_format"], score=d["score"],
                segmentation=segmentation, present=d["present"], presence_score=d["presence_score"],
                warnings=d["warnings"],
                points=[pb.Point(x=p[0], y=p[1], label=lab) for p, lab in zip(d["points"], d["point_labels"])],
                mask_png=d.get("mask_png", b""), heatmap_png=d.get("heatmap_png", b""),
            ))
        return pb.SegmentResponse(image=pb.ImageInfo(width=image.width, height=image.height), results=out,
                                  timings_ms=timings)

    def Ground(self, request, context):
        image, opts, results, timings = self._run(request, context, False)
        heatmaps = [pb.Heatmap(expression=r.expression, size=list(r.heatmap.shape), png=png_bytes(heatmap_u8(r)),
                               peak=r.points[0].tolist() if len(r.points) else [], warnings=r.warnings)
                    for r in results]
        return pb.GroundResponse(image=pb.ImageInfo(width=image.width, height=image.height), heatmaps=heatmaps,
                                 timings_ms=timings)


def start_grpc_server(engine: Engine, port: int, host: str = "0.0.0.0", workers: int = 4) -> tuple[grpc.Server, int]:
    """Start serving; returns the server and the bound port (``port=0`` is not "off" here: it
    binds a free port — callers decide whether to start at all)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", 64 * 2**20),
                                  ("grpc.max_send_message_length", 64 * 2**20)])
    pb_grpc.add_GroundingServicer_to_server(GroundingServicer(engine), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC port {host}:{port}")
    server.start()
    return server, bound
