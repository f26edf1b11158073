"""Steps asking for GPUs of given models, for placement tests on the process runtime with the
stand-in NVML library: each writes the GPUs it was given (NVIDIA_VISIBLE_DEVICES) to its output
and naps so the H100 steps overlap."""
import sys

from kfp import compiler, dsl


@dsl.container_component
def visible(seconds: int, gpus: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-c"],
        args=['sleep "$0"; mkdir -p "$(dirname "$1")"; printf "%s" "$NVIDIA_VISIBLE_DEVICES" > "$1"', seconds, gpus],
    )


@dsl.pipeline(name="gpus")
def gpus(seconds: int = 2):
    visible(seconds=seconds).set_display_name("cpu")
    tasks = [
        visible(seconds=seconds).set_accelerator_type("NVIDIA_TESLA_T4").set_accelerator_limit(1),
        visible(seconds=seconds).set_accelerator_type("NVIDIA_H100_80GB").set_accelerator_limit(2),
        visible(seconds=seconds).set_accelerator_type("NVIDIA_A100").set_accelerator_limit(4),
        visible(seconds=seconds).set_accelerator_type("NVIDIA_H100_80GB").set_accelerator_limit(4),
    ]
    for t in tasks:
        t.set_caching_options(False)


if __name__ == "__main__":
    compiler.Compiler().compile(gpus, sys.argv[1] if len(sys.argv) > 1 else "gpus.yaml")
