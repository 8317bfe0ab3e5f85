"""The library's layout: dependencies point one way, and one request schema serves every API."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Stage order: a package may import only those after it (service → serving → pipeline → segment →
# readout → backends; config, images, jsonl and the CLI are shared).
ORDER = ["serving", "pipeline", "segment", "readout", "backends"]
# Training, evaluation, exporters, the synthetic model builders and the tool adapters stay outside the inference package
# (the zoo reaches the builders through an entry point, never an import).
FORBIDDEN = {"eval", "exporters", "training", "synthetic", "integrations"}


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    pkg = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
    return out


def test_grounding_never_imports_eval_exporters_training_or_builders():
    offenders = [
        (str(p.relative_to(ROOT)), m)
        for p in (ROOT / "grounding").rglob("*.py")
        for m in _imports(p)
        if m.split(".")[0] in FORBIDDEN
    ]
    assert not offenders, offenders
    # and at run time: importing every module of the library loads none of them
    code = (
        "import pkgutil, importlib, sys, grounding\n"
        "for m in pkgutil.walk_packages(grounding.__path__, 'grounding.'):\n"
        "    m.name.endswith('__main__') or importlib.import_module(m.name)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & %r))" % FORBIDDEN
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"


def test_stage_dependencies_point_one_way():
    bad = []
    for p in (ROOT / "grounding").rglob("*.py"):
        parts = p.relative_to(ROOT / "grounding").parts
        if len(parts) < 2 or parts[0] not in ORDER:
            continue
        mine = ORDER.index(parts[0])
        for m in _imports(p):
            segs = m.split(".")
            if segs[0] == "grounding" and len(segs) > 1 and segs[1] in ORDER and ORDER.index(segs[1]) < mine:
                bad.append((str(p.relative_to(ROOT)), m))
    assert not bad, f"a stage imports one above it: {bad}"


def test_service_imports_only_the_serving_layer():
    mods = [m for m in _imports(ROOT / "service.py") if m.startswith("grounding")]
    assert mods and all(m.startswith("grounding.serving") for m in mods), mods


def test_proto_options_are_the_schema_options():
    """gRPC reads the schema's option names off ``grounding.v1.Options``: the proto declares
    exactly the schema's options of Segment and Ground (heatmaps over gRPC are always PNG bytes),
    each with presence where the schema's default is None."""
    from grounding.serving.proto import grounding_pb2 as pb
    from grounding.serving.schema import ENDPOINT_OPTIONS, Options

    wanted = (set(ENDPOINT_OPTIONS["segment"]) | set(ENDPOINT_OPTIONS["ground"])) - {"heatmap_format"}
    fields = pb.Options.DESCRIPTOR.fields_by_name
    assert set(fields) == wanted
    for name in wanted:
        assert fields[name].has_presence == (Options.model_fields[name].default is None), name


def test_options_map_onto_the_config():
    from grounding.config import GroundingConfig
    from grounding.serving.schema import Options, parse_options

    opts = Options(magnets=False, sinks_mode="suppress", views="assembled", seed=3, threshold=0.25)
    cfg = GroundingConfig().replace(**opts.overrides())
    assert (cfg.magnets.enabled, cfg.sinks.mode, cfg.views.mode, cfg.seed, cfg.threshold) == (
        False,
        "suppress",
        "assembled",
        3,
        0.25,
    )
    for bad, field in [
        ({"mask_format": "bmp"}, "mask_format"),
        ({"seed": 2**64}, "seed"),
        ({"window": 99}, "window"),
        ({"views": "local"}, "views"),
    ]:
        try:
            parse_options(bad)
        except ValueError as e:
            assert e.field == field and field in str(e)
        else:
            raise AssertionError(f"{bad} accepted")


def test_tiny_zoo_names_come_from_the_synthetic_entry_point(monkeypatch, tmp_path):
    """The zoo finds the builders through the ``dit_grounding.synthetic`` entry point of this
    checkout's install; where none is installed (a bento), a tiny-* name says what it needs."""
    import pytest

    from grounding.backends import zoo

    found = zoo.synthetic_models()
    assert found is not None and "tiny-flux" in found.names and "flux" in found.archs
    monkeypatch.setenv("GROUNDING_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo, "entry_points", lambda group: [])  # an installation without the package
    with pytest.raises(FileNotFoundError, match="synthetic models of a dit-grounding checkout"):
        zoo.resolve("tiny-flux")
    assert zoo.resolve("some-org/some-model") == "some-org/some-model"  # hub ids are untouched
