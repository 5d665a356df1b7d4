"""The MLflow record's names live in analysis/record.py only: no other source file spells one of them."""

from __future__ import annotations

import ast
from pathlib import Path

from analysis import record

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([REPO / "runner.py", *(p for d in ("models", "training", "analysis") for p in (REPO / d).rglob("*.py"))])


def _names() -> set[str]:
    """Every string the record defines that is specific enough to spot (tags, metrics with a '/',
    artifact paths, params), besides plain words such as "tokens" or "lr"."""
    values = {v for k, v in vars(record).items() if k.isupper() and isinstance(v, str)}
    return {v for v in values if "/" in v or "." in v}


def _prefixes() -> tuple[str, ...]:
    return ("datgpt.", f"{record.DIAG_PREFIX}/", record.DIAG_SUMMARY_PREFIX, f"{record.ANSWER_PREFIX}/",
            f"{record.EVAL_PREFIX}/")


def _literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_source_file_but_the_record_spells_a_record_name():
    names, prefixes = _names(), _prefixes()
    offences = []
    for path in SOURCES:
        if path == REPO / "analysis" / "record.py":
            continue
        for line, text in _literals(path):
            if text in names or text.startswith(prefixes):
                offences.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not offences, "record names spelled outside analysis/record.py:\n" + "\n".join(offences)


def test_the_scan_sees_a_spelled_name(tmp_path):
    """The check itself can fail: a file with a tag literal is found."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""doc: datgpt.arm is fine here"""\nTAG = "datgpt.arm"\nM = f"diag/{1}"\n')
    found = [t for _, t in _literals(bad) if t in _names() or t.startswith(_prefixes())]
    assert found == ["datgpt.arm", "diag/"]


def test_answer_metric_names():
    assert record.answer_metric("ngpt", "speedup", 6.0) == "result/ngpt/speedup_at_6.0"
    assert record.answer_metric("gpt", "final_val_loss") == "result/gpt/final_val_loss"
    assert record.answer_metric("ngpt", "tokens_to_target", 5.25, 1024) == "result/ctx1024/ngpt/tokens_to_target_at_5.25"
    assert record.best_lr_tag("ngpt") == "datgpt.best_lr.ngpt"
    assert record.best_lr_tag("ngpt", 16384) == "datgpt.best_lr.ngpt.16384"


def test_answer_metric_names_are_valid_mlflow_names():
    """MLflow takes alphanumerics, _ - . space : / only (its own check raises on anything else)."""
    from mlflow.utils.validation import _validate_metric_name

    for name in (record.answer_metric("gpt_qk", "speedup_ci_low", 3.25, 256),
                 record.answer_metric("ngpt", "final_val_loss"), record.diag_metric("cond", "attn_q", "layer_00")):
        _validate_metric_name(name)


def test_no_private_name_is_imported_from_another_module():
    """Modules meet through public names only: no `from models|training|analysis.x import _name`."""
    offences = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                    "models", "training", "analysis"):
                offences += [f"{path.relative_to(REPO)}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offences, "private names imported across modules:\n" + "\n".join(offences)
