"""A pipeline used as a component twice, with parameter and artifact outputs; its parameter
output comes from dsl.OneOf over condition branches."""
import sys
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Output

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def write(n: int, out: Output[Dataset]):
    with open(out.path, "w") as f:
        f.write(str(n))


@dsl.component(base_image=IMAGE)
def say(text: str) -> str:
    return text


@dsl.pipeline
def inner(n: int) -> NamedTuple("Outputs", [("size", str), ("data", Dataset)]):
    w = write(n=n)
    with dsl.If(n > 10):
        big = say(text="big")
    with dsl.Else():
        small = say(text="small")
    Outputs = NamedTuple("Outputs", [("size", str), ("data", Dataset)])
    return Outputs(size=dsl.OneOf(big.output, small.output), data=w.outputs["out"])


@dsl.component(base_image=IMAGE)
def combine(a: str, b: str, da: Input[Dataset], db: Input[Dataset]) -> str:
    return f"{a}:{open(da.path).read()},{b}:{open(db.path).read()}"


@dsl.pipeline(name="nested")
def nested(x: int = 50, y: int = 2) -> str:
    one = inner(n=x)
    two = inner(n=y)
    c = combine(
        a=one.outputs["size"], b=two.outputs["size"],
        da=one.outputs["data"], db=two.outputs["data"],
    )
    return c.output


if __name__ == "__main__":
    compiler.Compiler().compile(nested, sys.argv[1] if len(sys.argv) > 1 else "nested.yaml")
