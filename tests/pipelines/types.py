"""Every parameter type through pipeline inputs, task outputs and task inputs, optional inputs
and defaults, and the typed artifacts with their metadata (Metrics, ClassificationMetrics,
HTML, Markdown)."""
import sys
from typing import Dict, List, NamedTuple, Optional

from kfp import compiler, dsl
from kfp.dsl import HTML, ClassificationMetrics, Markdown, Metrics, Output

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def produce() -> NamedTuple(
    "Out", [("s", str), ("i", int), ("f", float), ("b", bool), ("l", List[int]), ("d", Dict[str, int])]
):
    from collections import namedtuple

    out = namedtuple("Out", ["s", "i", "f", "b", "l", "d"])
    return out("text", 42, 2.5, True, [1, 2, 3], {"a": 1})


@dsl.component(base_image=IMAGE)
def check(
    s: str,
    i: int,
    f: float,
    b: bool,
    l: List[int],
    d: Dict[str, int],
    opt: Optional[str] = None,
    dflt: int = 7,
) -> str:
    import json

    got = [type(v).__name__ for v in (s, i, f, b, l, d)]
    assert got == ["str", "int", "float", "bool", "list", "dict"], got
    return json.dumps({"s": s, "i": i, "f": f, "b": b, "l": l, "d": d, "opt": opt, "dflt": dflt})


@dsl.component(base_image=IMAGE)
def report(
    metrics: Output[Metrics],
    cm: Output[ClassificationMetrics],
    page: Output[HTML],
    notes: Output[Markdown],
):
    metrics.log_metric("accuracy", 0.9)
    metrics.log_metric("rows", 100)
    cm.log_confusion_matrix(["cat", "dog"], [[8, 2], [1, 9]])
    with open(page.path, "w") as f:
        f.write("<h1>report</h1>")
    with open(notes.path, "w") as f:
        f.write("# notes")


@dsl.pipeline(name="types")
def types(
    s: str = "in",
    i: int = 3,
    f: float = 0.5,
    b: bool = False,
    l: List[int] = [7, 8],
    d: Dict[str, int] = {"k": 2},
):
    p = produce()
    check(
        s=p.outputs["s"], i=p.outputs["i"], f=p.outputs["f"], b=p.outputs["b"],
        l=p.outputs["l"], d=p.outputs["d"],
    ).set_display_name("from-task")
    check(s=s, i=i, f=f, b=b, l=l, d=d, opt="given").set_display_name("from-inputs")
    report()


if __name__ == "__main__":
    compiler.Compiler().compile(types, sys.argv[1] if len(sys.argv) > 1 else "types.yaml")
