"""One step that sleeps `seconds`: a recurring run's long step."""
from kfp import compiler, dsl


@dsl.container_component
def nap(seconds: int):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-c"],
        args=['sleep "$0"', seconds],
    )


@dsl.pipeline(name="nap")
def nap_pipeline(seconds: int = 5):
    nap(seconds=seconds).set_caching_options(False)


if __name__ == "__main__":
    import sys

    compiler.Compiler().compile(nap_pipeline, sys.argv[1])
