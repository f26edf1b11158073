"""Resource limits reach the container, and a missing image is a clear step error."""
from kfp import compiler, dsl

READ_LIMITS = r"""
if [ -f /sys/fs/cgroup/memory.max ]; then
  mem=$(cat /sys/fs/cgroup/memory.max); set -- $(cat /sys/fs/cgroup/cpu.max); quota=$1; period=$2
else
  mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
  quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
fi
mkdir -p "$(dirname "$OUT_MEM")" "$(dirname "$OUT_CPU")"
printf "%s" "$mem" > "$OUT_MEM"
printf "%s/%s" "$quota" "$period" > "$OUT_CPU"
"""


@dsl.container_component
def limits(memory: dsl.OutputPath(int), cpu: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-c", 'OUT_MEM="$0" OUT_CPU="$1"; ' + READ_LIMITS],
        args=[memory, cpu],
    )


@dsl.container_component
def missing_image():
    return dsl.ContainerSpec(image="gantry/never-built:0.0.1", command=["true"])


@dsl.pipeline(name="limits")
def limits_pipeline():
    limits().set_memory_limit("256Mi").set_cpu_limit("500m")


@dsl.pipeline(name="missing-image")
def missing_image_pipeline():
    missing_image()


if __name__ == "__main__":
    import os
    import sys

    compiler.Compiler().compile(limits_pipeline, sys.argv[1])
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "missing_image.yaml")
    compiler.Compiler().compile(missing_image_pipeline, beside)
