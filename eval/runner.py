"""Resumable, shardable evaluation runs.

A run directory holds ``run.json`` (what is being evaluated), ``results.jsonl`` (one line per
finished sample, flushed and fsynced as it is written), and, at the end, ``summary.json`` +
``summary.md``. A killed run resumes where it stopped: finished samples are skipped, a torn last
line is discarded, nothing is counted twice. ``--shard i/n`` takes every n-th sample from i;
``merge`` joins shard directories and recomputes the summary from their lines.

One module (~480 lines): the per-sample function, the resumable local loop and the summary are
what both the local and the Ray runs share.
"""

from __future__ import annotations

import json
import random
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

from grounding.jsonl import JsonlWriter, read_jsonl

from . import metrics

RESULTS = "results.jsonl"
IMAGE_TASKS = ("refcoco", "vizwiz", "grefcoco")


@dataclass
class RunConfig:
    task: str  # refcoco | grefcoco | vizwiz | davis | ytvos | mevis
    data_root: str
    dataset: str
    split: str
    model: str
    segmenter: str = ""
    split_by: str | None = None
    image_root: str | None = None
    limit: int | None = None
    shard: tuple[int, int] = (0, 1)
    overrides: dict = field(default_factory=dict)
    video_maps: str = "frame"  # video sets: "frame" (per-frame maps) or "clip" (a video DiT over windows)
    propagate: bool = False  # video sets: maps at keyframes, the SAM 2-family segmenter's memory between
    keyframe_every: int = 8

    def identity(self) -> dict:
        """Fields that must match for a run directory to be resumed (the video fields only when not
        their defaults, so runs written before they existed still resume)."""
        d = asdict(self)
        d["shard"] = list(self.shard)
        if d["video_maps"] == "frame":
            del d["video_maps"]
        if not d["propagate"]:
            del d["propagate"], d["keyframe_every"]
        return d


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 ≤ i < n")
    return i, n


def select(n_total: int, limit: int | None, shard: tuple[int, int]) -> list[int]:
    """Sample indices of this shard: the first ``limit`` samples, every n-th from i."""
    n = n_total if limit is None else min(limit, n_total)
    i, k = shard
    return list(range(i, n, k))


class ResultsLog:
    """Append-only ``results.jsonl``; reading it back drops a torn final line."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / RESULTS
        self.records: list[dict] = read_results(self.path, repair=True)
        self.done = {r["id"] for r in self.records}
        self._writer = JsonlWriter(self.path)

    def append(self, record: dict) -> None:
        if record["id"] in self.done:
            raise ValueError(f"sample {record['id']} is already in {self.path}")
        self._writer.write(record)
        self.records.append(record)
        self.done.add(record["id"])

    def close(self) -> None:
        self._writer.close()


read_results = read_jsonl


def open_run(run_dir: Path, cfg: RunConfig) -> ResultsLog:
    run_dir.mkdir(parents=True, exist_ok=True)
    run_json = run_dir / "run.json"
    if run_json.is_file():
        old = json.loads(run_json.read_text())
        if old.get("config") != cfg.identity():
            raise ValueError(f"{run_dir} holds a different run ({run_json}); use another --out")
    else:
        run_json.write_text(json.dumps({"config": cfg.identity()}, indent=2) + "\n")
    return ResultsLog(run_dir)


# --- per-sample work: the same functions run in this process or on a Ray actor ------------------
def load_dataset(cfg: RunConfig):
    """The dataset a run reads (annotations only; images and frames are read per sample)."""
    if cfg.task == "refcoco":
        from .refcoco import RefDataset

        return RefDataset(cfg.data_root, cfg.dataset, cfg.split_by, cfg.split, cfg.image_root)
    if cfg.task == "vizwiz":
        from .answers import VizWizGrounding

        return VizWizGrounding(cfg.data_root, cfg.split)
    if cfg.task == "grefcoco":
        from .grefcoco import GRefDataset

        return GRefDataset(cfg.data_root, cfg.split, cfg.image_root, cfg.dataset, cfg.split_by or "unc")
    from .rvos import VIDEO_DATASETS

    return VIDEO_DATASETS[cfg.task](cfg.data_root, cfg.split)


def sample_ids(cfg: RunConfig, ds) -> list[str]:
    if cfg.task in IMAGE_TASKS:
        return [ds.sample_id(i) for i in range(len(ds))]
    return [s.id for s in ds.samples]


def sample_record(cfg: RunConfig, grounder, ds, i: int, run_dir: Path, frame_batch: int = 4) -> dict:
    """Ground sample ``i`` and score it: one ``results.jsonl`` record (a sentence for image sets, a
    (video, expression) for video sets, whose masks are written under ``run_dir/Annotations``)."""
    t = time.perf_counter()
    if cfg.task == "refcoco":
        s = ds[i]
        r = grounder.segment(s.image_path, s.sentence, **cfg.overrides)
        inter, union = metrics.intersection_union(r.mask, s.mask)
        rec = {
            "id": ds.sample_id(i),
            "ref_id": s.ref_id,
            "sent_id": s.sent_id,
            "image": s.image_path.name,
            "sentence": s.sentence,
            "inter": inter,
            "union": union,
            "iou": inter / union if union else 0.0,
            "pointing": metrics.pointing_hit(r.heatmap, s.mask, metrics.pointed(r)),
            "score": r.score,
            "box": list(r.box),
            "pred_pixels": int(r.mask.sum()),
            "gt_pixels": int(s.mask.sum()),
        }
        if s.kind:
            rec["type"] = s.kind
    elif cfg.task == "grefcoco":
        s = ds[i]
        r = grounder.segment(s.image_path, s.sentence, **cfg.overrides)
        pred = r.mask if r.present else np.zeros_like(r.mask)  # "nothing matches" is an empty prediction
        inter, union, score = metrics.gref_sample(pred, s.mask, s.no_target)
        rec = {
            "id": ds.sample_id(i),
            "ref_id": s.ref_id,
            "sent_id": s.sent_id,
            "image": s.image_path.name,
            "sentence": s.sentence,
            "no_target": s.no_target,
            "targets": s.targets,
            "inter": inter,
            "union": union,
            "iou": score,
            "pred_empty": not bool(pred.any()),
            "present": bool(r.present),
            "presence_score": r.presence_score,
            "instances": len(r.instances) if r.present else 0,
            "pred_pixels": int(pred.sum()),
            "gt_pixels": int(s.mask.sum()),
        }
        if not s.no_target:
            rec["pointing"] = metrics.pointing_hit(r.heatmap, s.mask, metrics.pointed(r))
        if s.kind:
            rec["type"] = s.kind
    elif cfg.task == "vizwiz":
        s = ds[i]
        r = grounder.ground_answer(s.image_path, s.question, s.answer, **cfg.overrides)
        inter, union = metrics.intersection_union(r.mask, s.mask)
        rec = {
            "id": ds.sample_id(i),
            "image": s.image_path.name,
            "question": s.question,
            "answer": s.answer,
            "inter": inter,
            "union": union,
            "iou": inter / union if union else 0.0,
            "pointing": metrics.pointing_hit(r.heatmap, s.mask, metrics.pointed(r)),
            "score": r.score,
        }
    else:
        rec = video_record(cfg, grounder, ds.samples[i], run_dir, frame_batch)
    rec["ms"] = (time.perf_counter() - t) * 1000
    return rec


def error_record(cfg: RunConfig, sample_id: str, error: BaseException, attempts: int) -> dict:
    """What a sample that kept failing leaves in ``results.jsonl``: scored as a miss (IoU 0, no
    pointing hit; videos unscored), with the reason; a rerun does not try it again."""
    rec = {"id": sample_id, "error": f"{type(error).__name__}: {error}"[:500], "attempts": attempts}
    if cfg.task in ("refcoco", "vizwiz"):
        rec.update({"inter": 0, "union": 0, "iou": 0.0, "pointing": False})
    elif cfg.task == "grefcoco":  # scored as a wrong answer whatever the sample was
        rec.update({"inter": 0, "union": 0, "iou": 0.0, "no_target": False, "pred_empty": True})
    return rec


def record_or_error(
    cfg: RunConfig, grounder, ds, i: int, sample_id: str, run_dir: Path, attempts: int = 2, frame_batch: int = 4
) -> dict:
    """``sample_record``, tried up to ``attempts`` times; then its ``error_record``."""
    for _ in range(attempts):
        try:
            return sample_record(cfg, grounder, ds, i, run_dir, frame_batch)
        except Exception as e:  # noqa: BLE001 — any failure of one sample is recorded, never lost
            last = e
    return error_record(cfg, sample_id, last, attempts)


class _Progress:
    """The running metrics a run's progress bar shows, updated one record at a time."""

    def __init__(self, task: str, records: list[dict]):
        self.task = task
        self.gref, self.image, self.jf = metrics.GeneralizedScores(), metrics.ImageScores(), []
        for r in records:
            self.add(r)

    def add(self, r: dict) -> None:
        if self.task == "grefcoco":
            self.gref.add(r["inter"], r["union"], r["iou"], r["no_target"], r["pred_empty"])
        elif self.task in ("refcoco", "vizwiz"):
            self.image.add(r["inter"], r["union"], r.get("pointing"))
        elif r.get("J&F") is not None:
            self.jf.append(r["J&F"])

    def postfix(self) -> dict:
        if self.task == "grefcoco":
            summ = self.gref.summary()
            return {"gIoU": f"{summ['giou']:.3f}", "N-acc": f"{summ['n_acc']:.3f}", "T-acc": f"{summ['t_acc']:.3f}"}
        if self.task in ("refcoco", "vizwiz"):
            summ = self.image.summary()
            return {"mIoU": f"{summ['miou']:.3f}", "oIoU": f"{summ['oiou']:.3f}"}
        return {"J&F": f"{np.mean(self.jf):.3f}"} if self.jf else {}


def run_local(cfg: RunConfig, grounder, run_dir: Path, attempts: int = 2, frame_batch: int = 4) -> dict:
    """Every sample of this shard not yet in ``results.jsonl``, in this process."""
    ds = load_dataset(cfg)
    ids = sample_ids(cfg, ds)
    log = open_run(run_dir, cfg)
    todo = [i for i in select(len(ids), cfg.limit, cfg.shard) if ids[i] not in log.done]
    bar = tqdm(
        todo,
        desc=f"{cfg.dataset} {cfg.split}",
        initial=len(log.records),
        total=len(log.records) + len(todo),
        dynamic_ncols=True,
    )
    progress = _Progress(cfg.task, log.records)
    try:
        for i in bar:
            rec = record_or_error(cfg, grounder, ds, i, ids[i], run_dir, attempts, frame_batch)
            log.append(rec)
            progress.add(rec)
            bar.set_postfix(progress.postfix())
    finally:
        log.close()
    return finish_run(cfg, run_dir)


def finish_run(cfg: RunConfig, run_dir: Path) -> dict:
    if cfg.task in ("ytvos", "mevis"):
        make_submission_zip(run_dir)
    return write_summary(run_dir)


# --- image runs ----------------------------------------------------------------------------------
def run_refcoco(cfg: RunConfig, grounder, run_dir: Path, save_overlays: int = 0) -> dict:
    summary = run_local(cfg, grounder, run_dir)
    if save_overlays:
        write_overlays(load_dataset(cfg), grounder, cfg, run_dir, save_overlays)
    return summary


def run_answers(cfg: RunConfig, grounder, run_dir: Path) -> dict:
    """Answer grounding (VizWiz-VQA-Grounding layout): ``grounder.ground_answer`` per question,
    mask IoU / pointing, resumable and shardable like ``run_refcoco``."""
    return run_local(cfg, grounder, run_dir)


def gref_scores(records: Iterable[dict]) -> metrics.GeneralizedScores:
    s = metrics.GeneralizedScores()
    for r in records:
        s.add(r["inter"], r["union"], r["iou"], r["no_target"], r["pred_empty"])
    return s


def gref_breakdown(records: list[dict]) -> dict[str, float]:
    """mIoU over single-target (``miou_single``) and multi-target (``miou_multi``) samples, mean
    |#instances predicted − #targets| (``count_error``; an empty prediction is 0 instances), gIoU
    and pointing per sentence type where the set has one (``giou/<type>``, ``pointing/<type>``),
    and the presence decision's accuracy and score ROC AUC (``presence_acc``, ``presence_auc``)."""
    out: dict[str, float] = {}
    for key, rows in (
        ("miou_single", [r for r in records if r.get("targets") == 1]),
        ("miou_multi", [r for r in records if (r.get("targets") or 0) > 1]),
    ):
        if rows:
            out[key] = float(np.mean([r["iou"] for r in rows]))
    counted = [r for r in records if "instances" in r]
    if counted:
        out["count_error"] = float(np.mean([abs(r["instances"] - r["targets"]) for r in counted]))
    for kind in sorted({r["type"] for r in records if r.get("type")}):
        rows = [r for r in records if r.get("type") == kind]
        out[f"giou/{kind}"] = float(np.mean([r["iou"] for r in rows]))
        pointed = [r["pointing"] for r in rows if "pointing" in r]
        if pointed:
            out[f"pointing/{kind}"] = float(np.mean(pointed))
    scored = [r for r in records if r.get("presence_score") is not None and "present" in r]
    if scored:  # the presence decision: its accuracy, and its score's ROC AUC where both cases occur
        has = np.array([not r["no_target"] for r in scored])
        out["presence_acc"] = float(np.mean([r["present"] == h for r, h in zip(scored, has)]))
        if has.any() and not has.all():
            from grounding.readout.presence import roc_auc

            out["presence_auc"] = roc_auc(np.array([r["presence_score"] for r in scored]), has.astype(int))
    return out


def image_scores(records: Iterable[dict]) -> metrics.ImageScores:
    s = metrics.ImageScores()
    for r in records:
        s.add(r["inter"], r["union"], r.get("pointing"))
    return s


def write_overlays(ds, grounder, cfg: RunConfig, run_dir: Path, k: int) -> list[Path]:
    """Overlay PNGs of the k best, k worst and k random samples (seed 0) of the run."""
    from grounding.pipeline.result import overlay

    records = read_results(run_dir / RESULTS)
    by_iou = sorted(records, key=lambda r: (-r["iou"], r["id"]))
    rng = random.Random(0)
    picks = {"best": by_iou[:k], "worst": by_iou[::-1][:k], "random": rng.sample(records, min(k, len(records)))}
    index = {ds.sample_id(i): i for i in range(len(ds))}
    out_dir = run_dir / "overlays"
    out_dir.mkdir(exist_ok=True)
    written = []
    for kind, recs in picks.items():
        for rank, rec in enumerate(recs):
            s = ds[index[rec["id"]]]
            r = grounder.segment(s.image_path, s.sentence, **cfg.overrides)
            with Image.open(s.image_path) as im:
                path = out_dir / f"{kind}_{rank:02d}_{rec['id'].replace(':', '-')}_iou{rec['iou']:.2f}.png"
                overlay(im.convert("RGB"), r).save(path)
            written.append(path)
    return written


# --- video runs ----------------------------------------------------------------------------------
def run_video(cfg: RunConfig, grounder, run_dir: Path, frame_batch: int = 4) -> dict:
    """Each (video, expression) through ``grounding.pipeline.video.iter_video`` (temporal aggregation,
    mask propagation); masks written as ``Annotations/<video>/<exp_id>/<frame>.png``."""
    return run_local(cfg, grounder, run_dir, frame_batch=frame_batch)


def video_record(cfg: RunConfig, grounder, s, run_dir: Path, frame_batch: int = 4) -> dict:
    """One (video, expression): masks written, J / F against the ground truth where there is one."""
    from grounding.pipeline.video import VideoConfig, iter_video

    drop = cfg.task == "davis"  # the DAVIS semi-supervised protocol leaves out first and last frame
    out_dir = run_dir / "Annotations" / s.video / s.exp_id.replace("/", "_")
    out_dir.mkdir(parents=True, exist_ok=True)
    js, fs = [], []
    video = VideoConfig(
        batch_frames=frame_batch,
        maps=cfg.video_maps,  # type: ignore[arg-type]
        propagate=cfg.propagate,
        keyframe_every=cfg.keyframe_every,
    )
    for f in iter_video(grounder, s.frames(), s.expression, video, **cfg.overrides):
        Image.fromarray(f.mask.astype(np.uint8) * 255).save(out_dir / f"{s.frame_names[f.index]}.png")
        if s.has_gt:
            gt, void = s.gt(f.index)
            js.append(metrics.region_similarity(f.mask, gt, void))
            fs.append(metrics.contour_accuracy(f.mask, gt, void))
    rec = {
        "id": s.id,
        "video": s.video,
        "exp_id": s.exp_id,
        "group": s.group,
        "expression": s.expression,
        "frames": len(s.frame_paths),
    }
    if s.has_gt:
        keep = slice(1, -1) if drop and len(js) > 2 else slice(None)
        j_m, j_r, _ = metrics.statistics(js[keep])
        f_m, f_r, _ = metrics.statistics(fs[keep])
        rec.update({"J": j_m, "F": f_m, "J&F": (j_m + f_m) / 2, "J_recall": j_r, "F_recall": f_r})
    return rec


def make_submission_zip(run_dir: Path) -> Path:
    """``submission.zip`` of ``Annotations/<video>/<exp_id>/<frame>.png``, as the servers expect."""
    path = run_dir / "submission.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for png in sorted((run_dir / "Annotations").rglob("*.png")):
            z.write(png, png.relative_to(run_dir).as_posix())
    return path


# --- summaries -----------------------------------------------------------------------------------
def summarise(task: str, records: list[dict]) -> dict:
    """Flat metric dict of a list of result records (in id order, so that a run's summary does
    not depend on the order its samples finished in)."""
    records = sorted(records, key=lambda r: r["id"])
    if task == "grefcoco":
        out = gref_scores(records).summary()
        targets = [r for r in records if not r["no_target"] and "pointing" in r]
        if targets:
            out["pointing"] = sum(bool(r["pointing"]) for r in targets) / len(targets)
        out.update(gref_breakdown(records))
    elif task in ("refcoco", "vizwiz"):
        out = image_scores(records).summary()
        for kind in sorted({r["type"] for r in records if r.get("type")}):
            part = image_scores(r for r in records if r.get("type") == kind).summary()
            out.update({f"{k}/{kind}": part[k] for k in ("n", "miou", "pointing") if k in part})
    else:
        scored = [r for r in records if r.get("J") is not None]
        out = {"n": len(records), "scored": len(scored)}
        if scored:
            for key in ("J", "F", "J&F", "J_recall", "F_recall"):
                out[key] = float(np.mean([r[key] for r in scored]))
            for group in sorted({r.get("group", "") for r in scored} - {""}):
                rows = [r for r in scored if r.get("group") == group]
                out[f"J&F/{group}"] = float(np.mean([r["J&F"] for r in rows]))
    errors = sum(1 for r in records if r.get("error"))
    if errors:
        out["errors"] = errors
    ms = [r["ms"] for r in records if "ms" in r]
    if ms:
        out["mean_ms"] = float(np.mean(ms))
    return out


def write_summary(run_dir: Path, records: list[dict] | None = None, config: dict | None = None) -> dict:
    config = config or json.loads((run_dir / "run.json").read_text())["config"]
    records = read_results(run_dir / RESULTS) if records is None else records
    summary = summarise(config["task"], records)
    doc = {**summary, "config": config}
    (run_dir / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# {config['task']} · {config['dataset']} · {config['split']}", "", "| metric | value |", "|---|---|"]
    for k, v in summary.items():
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += [
        "",
        f"model: `{config['model']}`  segmenter: `{config.get('segmenter') or 'map-threshold'}`",
        f"shard: {config['shard'][0]}/{config['shard'][1]}  limit: {config.get('limit')}  "
        f"overrides: `{json.dumps(config.get('overrides', {}))}`",
        "",
    ]
    (run_dir / "summary.md").write_text("\n".join(lines))
    return doc


def merge(run_dirs: list[Path], out: Path) -> dict:
    """Join shard runs of one evaluation into ``out`` and summarise them together."""
    configs = [json.loads((d / "run.json").read_text())["config"] for d in run_dirs]
    base = {k: v for k, v in configs[0].items() if k != "shard"}
    for c in configs[1:]:
        if {k: v for k, v in c.items() if k != "shard"} != base:
            raise ValueError("runs differ in more than their shard; refusing to merge")
    seen: dict[str, dict] = {}
    for d in run_dirs:
        for r in read_results(d / RESULTS):
            if r["id"] in seen:
                raise ValueError(f"sample {r['id']} appears in more than one run")
            seen[r["id"]] = r
    out.mkdir(parents=True, exist_ok=True)
    records = sorted(seen.values(), key=lambda r: r["id"])
    (out / RESULTS).unlink(missing_ok=True)
    with JsonlWriter(out / RESULTS) as w:
        for r in records:
            w.write(r)
    config = dict(base, shard=[0, 1], merged_from=[str(d) for d in run_dirs])
    (out / "run.json").write_text(json.dumps({"config": config}, indent=2) + "\n")
    return write_summary(out, records, config)
