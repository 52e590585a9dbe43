"""Stage boundaries a reader can trust: no import circle between stages, no private names across modules,
training independent of inference (every import counted, function-level ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "monai_pipeline"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        name = ".".join(f.relative_to(PKG.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _imports() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("monai_pipeline"):
                for alias in node.names:
                    if alias.name.startswith("_") and alias.name != "__version__":
                        private.append(f"{m} imports {node.module}.{alias.name}")
                    full = f"{node.module}.{alias.name}"
                    edges[m].add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name.startswith("monai_pipeline."))
    return edges, private


def _stage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _stage_graph() -> dict[str, set[str]]:
    edges, _ = _imports()
    graph: dict[str, set[str]] = {}
    for m, targets in edges.items():
        for t in targets:
            if _stage(m) != _stage(t) and _stage(t) != "monai_pipeline":
                graph.setdefault(_stage(m), set()).add(_stage(t))
    return graph


def test_no_import_circle_between_stages():
    graph = _stage_graph()

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        for n in graph.get(a, ()):
            if n == b or (n not in seen and (seen.add(n) or reaches(n, b, seen))):
                return True
        return False

    circles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a, set())})
    assert not circles, circles


def test_no_private_names_across_modules():
    _, private = _imports()
    assert not private, private


def test_training_does_not_import_inference():
    assert "monai_pipeline.inference" not in _stage_graph().get("monai_pipeline.training", set())


def test_cli_modules_are_thin():
    """The CLI holds arguments and calls into the library: no module over 200 lines, no verb's run function (or
    argument function) over 40 lines."""
    cli = PKG / "cli"
    too_long = [f.name for f in cli.glob("*.py") if len(f.read_text().splitlines()) > 200]
    assert not too_long, too_long
    big = []
    for f in cli.glob("*.py"):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith(("run_", "add_")):
                if node.end_lineno - node.lineno + 1 > 40:
                    big.append(f"{f.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not big, big


def test_every_verb_is_declared_in_one_place():
    """Each verb is one ``Verb`` in one module: its name, help, arguments and run function side by side."""
    from monai_pipeline.cli.app import VERBS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(VERBS)
    for name, verb in VERBS.items():
        assert verb.run.__module__ == verb.add_arguments.__module__, name
