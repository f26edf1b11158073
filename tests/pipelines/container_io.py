"""Container components (no Python executor): output parameter files and artifact paths."""
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Output, OutputPath


@dsl.container_component
def produce(message: str, greeting: OutputPath(str), data: Output[Dataset]):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-c"],
        args=[
            'mkdir -p "$(dirname "$1")" "$(dirname "$2")" && printf "hello %s" "$0" > "$1" && printf "a\\nb\\nc\\n" > "$2"',
            message,
            greeting,
            data.path,
        ],
    )


@dsl.container_component
def consume(greeting: str, data: Input[Dataset], lines: OutputPath(int)):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-c"],
        args=[
            'echo "got: $0"; mkdir -p "$(dirname "$2")"; wc -l < "$1" | tr -d " " > "$2"',
            greeting,
            data.path,
            lines,
        ],
    )


@dsl.pipeline(name="container-io")
def container_io(message: str = "world"):
    p = produce(message=message)
    consume(greeting=p.outputs["greeting"], data=p.outputs["data"])


if __name__ == "__main__":
    import sys

    compiler.Compiler().compile(container_io, sys.argv[1])
