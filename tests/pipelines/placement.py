"""Placement end to end: `gpu` asks for two H100s (no agent of a test fleet without GPUs could
ever run it: the run fails at once, saying why); `sleeper` is three sequential naps, for draining
an agent between them. Compiles gpu.yaml and sleeper.yaml beside the given path."""
import os
import sys

from kfp import compiler, dsl

IMAGE = "gantry/busybox:latest"


@dsl.container_component
def train():
    return dsl.ContainerSpec(image=IMAGE, command=["true"])


@dsl.pipeline(name="gpu")
def gpu():
    train().set_accelerator_type("NVIDIA_H100_80GB").set_accelerator_limit(2)


@dsl.container_component
def nap(seconds: int, tag: str):
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["sh", "-c"],
        args=['echo "start $1"; sleep "$0"; echo "end $1"', seconds, tag],
    )


@dsl.pipeline(name="naps")
def naps(seconds: int = 3):
    a = nap(seconds=seconds, tag="a")
    b = nap(seconds=seconds, tag="b").after(a)
    for t in (a, b):
        t.set_caching_options(False)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "placement.yaml"
    compiler.Compiler().compile(gpu, out)
    compiler.Compiler().compile(naps, os.path.join(os.path.dirname(out), "naps.yaml"))
