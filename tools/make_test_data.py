"""Derive the tests' data tables from ../shared: the official topology table and the published numbers.

``tests/data/official_topology.json`` comes from the official DeepLab v2 prototxts;
``tests/data/published_numbers.json`` lists every published mIoU-like number (20 < x <= 100) of
``facts/published_tables.yaml``, which reproduce/tables/published.yaml must contain.

The tests compare our generated Caffe topologies with the released networks. They read this
compact table (per layer that carries weights or shapes the network: name, type, bottoms, tops,
parameters, shared parameter names; plus a few whole-file facts), so a fresh clone runs them
without the prototxt files. Regenerate or check it when the public copies are at hand:

    python -m tools.make_test_data [--shared ../shared] [--check]   # from the repository root
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # a file run has tools/, not the repository, on sys.path
    sys.exit(f"run it from the repository root as: python -m tools.{Path(__file__).stem}")

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "tests" / "data" / "official_topology.json"
NUMBERS = REPO / "tests" / "data" / "published_numbers.json"
SUBS = {"EXP": "voc12", "NUM_LABELS": "21", "NET_ID": "deeplab"}
NETS = ("resnet101_deploy.prototxt", "resnet101_msc_test.prototxt", "vgg16_aspp_test.prototxt")
TRAIN = "resnet101_msc_train.prototxt"


def derive(fixtures: Path) -> dict[str, Any]:
    from converters.caffe.reader import read_prototxt
    from converters.caffe.topology import COMPARED_KINDS, layer_signatures

    table: dict[str, Any] = {"source": "derived from the official DeepLab v2 prototxts by tools/make_topology_table.py",
                             "substitutions": SUBS, "kinds": list(COMPARED_KINDS), "nets": {}}
    for name in NETS:
        net = read_prototxt(fixtures / name, SUBS)
        types: dict[str, int] = {}
        for lp in net.layer:
            types[lp.type] = types.get(lp.type, 0) + 1
        table["nets"][name] = {"layers": len(net.layer), "layer_types": dict(sorted(types.items())),
                               "signatures": layer_signatures(net)}
    train = read_prototxt(fixtures / TRAIN, SUBS)
    tp = train.layer[0].transform_param
    table["train"] = {"file": TRAIN, "crop_size": tp.crop_size, "scale_factors": [float(s) for s in tp.scale_factors],
                      "mirror": tp.mirror, "layers": len(train.layer)}
    return table


def render(table: dict[str, Any]) -> str:
    """One line per layer: compact, and diffs stay readable."""
    head = {k: v for k, v in table.items() if k != "nets"}
    lines = ["{", *[f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()], '  "nets": {']
    for i, (net, info) in enumerate(table["nets"].items()):
        lines.append(f"    {json.dumps(net)}: {{")
        lines.append(f'      "layers": {info["layers"]}, "layer_types": {json.dumps(info["layer_types"])},')
        lines.append('      "signatures": {')
        sigs = list(info["signatures"].items())
        for j, (layer, sig) in enumerate(sigs):
            lines.append(f"        {json.dumps(layer)}: {json.dumps(sig)}" + ("," if j < len(sigs) - 1 else ""))
        lines.append("      }")
        lines.append("    }" + ("," if i < len(table["nets"]) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def published_numbers(facts_yaml: Path) -> str:
    from reproduce.yamlfile import load_yaml

    def numbers(node: object) -> list[float]:
        if isinstance(node, dict):
            return [x for v in node.values() for x in numbers(v)]
        if isinstance(node, list):
            return [x for v in node for x in numbers(v)]
        return [float(node)] if isinstance(node, float) else []

    facts = load_yaml(facts_yaml)
    values = sorted({x for x in numbers(facts) if 20.0 < x <= 100.0})  # not scales such as 0.5
    return json.dumps({"source": f"every number 20 < x <= 100 of facts/{facts_yaml.name} (tools/make_test_data.py)",
                       "numbers": values}) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.make_test_data",
                                     description="Derive the tests' data tables from ../shared.")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the shared folder (fixtures/deeplab_v2/*.prototxt, facts/published_tables.yaml)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a table differs from its source")
    args = parser.parse_args(argv)
    fixtures, facts = args.shared / "fixtures" / "deeplab_v2", args.shared / "facts" / "published_tables.yaml"
    if not fixtures.is_dir() or not facts.is_file():
        print(f"error: {args.shared}: no fixtures/deeplab_v2 or facts/published_tables.yaml", file=sys.stderr)
        return 1
    outputs = {TABLE: render(derive(fixtures)), NUMBERS: published_numbers(facts)}
    stale = False
    for path, text in outputs.items():
        assert json.loads(text) is not None
        if args.check:
            same = path.is_file() and path.read_text(encoding="utf-8") == text
            stale |= not same
            print(f"{path}: {'up to date' if same else 'STALE: regenerate it'}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(text)} bytes)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
