"""Scratch space of a step's own: kfp-kubernetes `empty_dir_mount` on disk and in memory, and
a larger `/dev/shm` (the `enabledSharedMemory` setting, which kfp-kubernetes 2.16 compiles but
offers no function for). The step fails unless each mount is what was asked; it writes the
lines of /proc/mounts it checked."""
import sys

from google.protobuf import json_format
from kfp import compiler, dsl, kubernetes
from kfp.kubernetes import common


@dsl.container_component
def scratch(mounts: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=[
            "sh",
            "-ec",
            "echo kept > /scratch/a && test \"$(cat /scratch/a)\" = kept"
            " && echo fast > /fast/b && echo shared > /dev/shm/c"
            " && grep -E ' /(fast|dev/shm|scratch) ' /proc/mounts > \"$0\"",
            mounts,
        ],
    )


def with_shared_memory(task, size):
    msg = common.get_existing_kubernetes_config_as_message(task)
    msg.enabled_shared_memory.volume_name = "shm"
    msg.enabled_shared_memory.size = size
    task.platform_config["kubernetes"] = json_format.MessageToDict(msg)
    return task


@dsl.pipeline(name="empty-dir")
def empty_dir():
    t = scratch()
    kubernetes.empty_dir_mount(t, volume_name="scratch", mount_path="/scratch")
    kubernetes.empty_dir_mount(
        t, volume_name="fast", mount_path="/fast", medium="Memory", size_limit="16Mi"
    )
    with_shared_memory(t, "256Mi")


if __name__ == "__main__":
    compiler.Compiler().compile(empty_dir, sys.argv[1] if len(sys.argv) > 1 else "empty_dir.yaml")
