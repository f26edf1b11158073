"""dsl.ParallelFor in its forms, with dsl.Collected parameters and artifacts.

- over a pipeline parameter (a list of ints), at most `parallelism` iterations at once, each
  squaring its item and writing it as a Dataset; the squares collected into a sum and the
  datasets collected into one consumer that reads them all;
- over a constant list of dicts, the body reading the items' fields;
- a loop nested in a loop over an upstream task's output.
"""
import sys
from typing import List

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Output

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def square(x: int, out: Output[Dataset]) -> int:
    with open(out.path, "w") as f:
        f.write(str(x * x))
    out.metadata["x"] = x
    return x * x


@dsl.component(base_image=IMAGE)
def total(nums: List[int]) -> int:
    print("sum of", nums, "=", sum(nums))
    return sum(nums)


@dsl.component(base_image=IMAGE)
def read_all(ds: Input[List[Dataset]]) -> str:
    values = sorted(int(open(d.path).read()) for d in ds)
    print("datasets:", values)
    return ",".join(str(v) for v in values)


@dsl.component(base_image=IMAGE)
def describe(label: str, size: str) -> str:
    return f"{label}:{size}"


@dsl.component(base_image=IMAGE)
def rows() -> List[str]:
    return ["r1", "r2"]


@dsl.component(base_image=IMAGE)
def cell(row: str, col: int) -> str:
    return f"{row}c{col}"


@dsl.pipeline(name="loops")
def loops(xs: List[int] = [1, 2, 3, 4]) -> int:
    with dsl.ParallelFor(xs, parallelism=2) as x:
        sq = square(x=x)
    s = total(nums=dsl.Collected(sq.outputs["Output"]))
    read_all(ds=dsl.Collected(sq.outputs["out"]))

    with dsl.ParallelFor([{"label": "a", "size": 1}, {"label": "b", "size": 2}]) as item:
        describe(label=item.label, size=item.size)

    r = rows()
    with dsl.ParallelFor(r.output) as row:
        with dsl.ParallelFor([1, 2]) as col:
            cell(row=row, col=col)
    return s.output


if __name__ == "__main__":
    compiler.Compiler().compile(loops, sys.argv[1] if len(sys.argv) > 1 else "loops.yaml")
