"""The package's layers point only down: no module imports one from a higher layer.

Every module of ``linecam`` is parsed, function-local imports included (a lazy import is still a dependency),
and each ``linecam`` import is checked against ``LAYERS``, the picture in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import linecam

SOURCE_ROOT = Path(linecam.__file__).resolve().parent.parent

#: bottom (0) to top; a module may import modules of its own layer and of the layers below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("linecam", "linecam.yamlfile", "linecam.files", "linecam.progress", "linecam.hardware", "linecam.decision",
     "linecam.plugins"),
    ("linecam.dataset",),
    ("linecam.synth",),
    ("linecam.grdnet",),
    ("linecam.backends",),
    ("linecam.modelstore",),
    ("linecam.config",),
    ("linecam.runtime",),
    ("linecam.lifecycle",),
    ("linecam.commands", "linecam.cli", "linecam.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of the most specific entry that is the module or a package holding it."""
    best, rank = -1, -1
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > best:
                best, rank = len(entry), i
    if rank < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/ARCHITECTURE.md")
    return rank


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def linecam_imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a linecam module in ``path``, at any depth of the code."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "linecam"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "linecam":
                continue
            for alias in node.names:  # `from linecam.runtime import infer` imports the module runtime.infer
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub, root) else target))
    return found


def upward_imports(root: Path) -> list[str]:
    """Every import under ``root/linecam`` that runs up a layer, as 'file:line: who (layer) imports what (layer)'."""
    found = []
    for path in sorted((root / "linecam").rglob("*.py")):
        module = module_name(path, root)
        mine = layer_of(module)
        for line, target in linecam_imports(path, root):
            theirs = layer_of(target)
            if theirs > mine:
                found.append(f"{path.relative_to(root)}:{line}: {module} (layer {mine}) imports {target} "
                             f"(layer {theirs})")
    return found


def test_no_import_runs_up_a_layer() -> None:
    upward = upward_imports(SOURCE_ROOT)
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_the_check_catches_a_lazy_upward_import(tmp_path: Path) -> None:
    """The check must be able to fail: a function-local import from the runtime in the model code is caught,
    a relative one too, and a downward one is not."""
    pkg = tmp_path / "linecam"
    for folder in ("grdnet", "runtime"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime" / "infer.py").write_text("from linecam.grdnet import model\n")
    (pkg / "grdnet" / "model.py").write_text("def f():\n    from linecam.runtime.infer import InferWorker\n"
                                             "    return InferWorker\n")
    (pkg / "grdnet" / "train.py").write_text("from ..runtime import infer\n")
    found = upward_imports(tmp_path)
    assert len(found) == 2, found
    assert found[0].startswith("linecam/grdnet/model.py:2: linecam.grdnet.model (layer 3) imports "
                               "linecam.runtime.infer (layer 7)")
    assert "linecam/grdnet/train.py:1" in found[1] and "linecam.runtime.infer" in found[1]
