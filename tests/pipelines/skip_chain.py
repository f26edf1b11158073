"""A failure two steps upstream: both dependents are skipped, one after the other, and the run fails."""
from kfp import compiler, dsl

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def ok(text: str) -> str:
    return text


@dsl.component(base_image=IMAGE)
def boom(text: str) -> str:
    raise RuntimeError(f"boom: {text}")


@dsl.pipeline(name="skip-chain")
def skip_chain():
    b = boom(text="x")
    first = ok(text=b.output)
    ok(text=first.output)


if __name__ == "__main__":
    import sys

    compiler.Compiler().compile(skip_chain, sys.argv[1])
