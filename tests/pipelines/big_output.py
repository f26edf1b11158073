"""One step whose output parameter is `size` bytes (argv: out.yaml)."""
from kfp import compiler, dsl


@dsl.container_component
def big(size: int, out: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-c"],
        args=['head -c "$0" /dev/zero | tr "\\0" a > "$1"', size, out],
    )


@dsl.pipeline(name="big-output")
def big_output(size: int = 16):
    big(size=size).set_caching_options(False)


if __name__ == "__main__":
    import sys

    compiler.Compiler().compile(big_output, sys.argv[1])
