"""dsl.If / dsl.Elif / dsl.Else on a step's output, with a nested DAG output (dsl.OneOf)."""
from kfp import compiler, dsl

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def pick(n: int) -> int:
    return n


@dsl.component(base_image=IMAGE)
def say(text: str) -> str:
    print(text)
    return text


@dsl.pipeline(name="if-elif-else")
def conditions(n: int = 5) -> str:
    p = pick(n=n)
    with dsl.If(p.output > 10):
        big = say(text="big")
    with dsl.Elif(p.output > 3):
        mid = say(text="medium")
    with dsl.Else():
        small = say(text="small")
    chosen = dsl.OneOf(big.output, mid.output, small.output)
    say(text=chosen).set_display_name("announce")
    return chosen


if __name__ == "__main__":
    import sys

    compiler.Compiler().compile(conditions, sys.argv[1])
