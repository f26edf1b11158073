"""Conditions on loop items and on a nested pipeline's output: dsl.If / dsl.Elif / dsl.Else
inside a ParallelFor (the SDK writes int() casts, && and ! for them), and a condition on a
string output of a nested pipeline."""
import sys

from kfp import compiler, dsl

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def say(text: str) -> str:
    return text


@dsl.component(base_image=IMAGE)
def flag(on: bool) -> bool:
    return on


@dsl.pipeline
def inner(word: str) -> str:
    return say(text=word).output


@dsl.pipeline(name="loop-conditions")
def loop_conditions(limit: float = 2.5):
    with dsl.ParallelFor([1, 5, 12]) as x:
        with dsl.If(x > 10):
            say(text="big")
        with dsl.Elif(x > 3):
            say(text="medium")
        with dsl.Else():
            say(text="small")
    n = inner(word="go")
    with dsl.If(n.output == "go"):
        f = flag(on=True)
        with dsl.If(f.output == True):
            say(text="flag on")
    with dsl.If(limit < 2.0):
        say(text="never")


if __name__ == "__main__":
    compiler.Compiler().compile(
        loop_conditions, sys.argv[1] if len(sys.argv) > 1 else "loop_conditions.yaml"
    )
