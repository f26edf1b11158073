"""A step that fails: its dependents are skipped, an independent branch still runs, the run fails."""
from kfp import compiler, dsl

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def ok(text: str) -> str:
    return text


@dsl.component(base_image=IMAGE)
def boom(text: str) -> str:
    raise RuntimeError(f"boom: {text}")


@dsl.pipeline(name="failing")
def failing():
    b = boom(text="x")
    ok(text=b.output).set_display_name("after-boom")
    ok(text="independent")


if __name__ == "__main__":
    import sys

    compiler.Compiler().compile(failing, sys.argv[1])
