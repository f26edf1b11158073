"""A fan-out of `n` iterations, at most 5 at once, each writing its own Dataset; the squares
collected into a sum and the datasets into one reader; the loop wrapped in an exit handler
whose exit task reports the final status. An item equal to `fail_on` makes its iteration fail.
"""
import sys
from typing import List

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Output, PipelineTaskFinalStatus

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def numbers(n: int) -> List[int]:
    return list(range(n))


@dsl.component(base_image=IMAGE)
def square(x: int, fail_on: int, out: Output[Dataset]) -> int:
    if x == fail_on:
        raise ValueError(f"item {x} is the one that fails")
    with open(out.path, "w") as f:
        f.write(str(x * x))
    out.metadata["x"] = x
    return x * x


@dsl.component(base_image=IMAGE)
def total(nums: List[int]) -> int:
    return sum(nums)


@dsl.component(base_image=IMAGE)
def read_all(ds: Input[List[Dataset]]) -> str:
    return ",".join(sorted(open(d.path).read() for d in ds))


@dsl.component(base_image=IMAGE)
def report(status: PipelineTaskFinalStatus) -> str:
    line = f"{status.state}|{status.pipeline_task_name}|{status.error_message}"
    print(line)
    return line


@dsl.pipeline(name="fanout")
def fanout(n: int = 50, fail_on: int = -1):
    with dsl.ExitHandler(report()):
        xs = numbers(n=n)
        with dsl.ParallelFor(xs.output, parallelism=5) as x:
            sq = square(x=x, fail_on=fail_on)
        total(nums=dsl.Collected(sq.outputs["Output"]))
        read_all(ds=dsl.Collected(sq.outputs["out"]))


if __name__ == "__main__":
    compiler.Compiler().compile(fanout, sys.argv[1] if len(sys.argv) > 1 else "fanout.yaml")
