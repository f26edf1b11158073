"""A linear pipeline: parameters and artifacts flow from step to step.

make_data (lightweight Python) writes a Dataset and returns its row count; scale reads it,
doubles every value and writes a new Dataset plus a float; report checks both.
"""
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Output

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def make_data(rows: int, data: Output[Dataset]) -> int:
    with open(data.path, "w") as f:
        for i in range(rows):
            f.write(f"{i}\n")
    data.metadata["rows"] = rows
    return rows


@dsl.component(base_image=IMAGE)
def scale(factor: float, data: Input[Dataset], scaled: Output[Dataset]) -> float:
    total = 0.0
    with open(data.path) as src, open(scaled.path, "w") as dst:
        for line in src:
            v = float(line) * factor
            total += v
            dst.write(f"{v}\n")
    return total


@dsl.component(base_image=IMAGE)
def report(count: int, total: float, scaled: Input[Dataset]) -> str:
    with open(scaled.path) as f:
        n = sum(1 for _ in f)
    assert n == count, (n, count)
    return f"{count} rows, total {total}"


@dsl.pipeline(name="linear-params-artifacts")
def linear(rows: int = 10, factor: float = 2.0):
    d = make_data(rows=rows)
    s = scale(factor=factor, data=d.outputs["data"])
    report(count=d.outputs["Output"], total=s.outputs["Output"], scaled=s.outputs["scaled"])


if __name__ == "__main__":
    import sys

    compiler.Compiler().compile(linear, sys.argv[1])
