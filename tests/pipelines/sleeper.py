"""Three sequential sleeps: long enough to kill the coordinator in the middle."""
from kfp import compiler, dsl


@dsl.container_component
def nap(seconds: int, tag: str, done: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-c"],
        args=['echo "start $1"; sleep "$0"; mkdir -p "$(dirname "$2")"; printf "%s" "$1" > "$2"; echo "end $1"', seconds, tag, done],
    )


@dsl.pipeline(name="sleeper")
def sleeper(seconds: int = 2):
    a = nap(seconds=seconds, tag="a")
    b = nap(seconds=seconds, tag=a.outputs["done"])
    c = nap(seconds=seconds, tag=b.outputs["done"])
    # The naps pass the same tag along, so caching would serve the second and third from the
    # first: the tests that use this pipeline need every nap to really run.
    for t in (a, b, c):
        t.set_caching_options(False)


if __name__ == "__main__":
    import sys

    compiler.Compiler().compile(sleeper, sys.argv[1])
