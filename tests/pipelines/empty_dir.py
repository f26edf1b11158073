"""A Kubernetes-only feature Gantry refuses at submit: kfp-kubernetes `empty_dir_mount` (a
Kubernetes emptyDir volume, which agents do not provide)."""
import sys

from kfp import compiler, dsl, kubernetes


@dsl.container_component
def print_env():
    return dsl.ContainerSpec(
        image="gantry/busybox:latest", command=["sh", "-c", "ls /scratch"]
    )


@dsl.pipeline(name="empty-dir")
def empty_dir():
    t = print_env()
    kubernetes.empty_dir_mount(t, volume_name="scratch", mount_path="/scratch")


if __name__ == "__main__":
    compiler.Compiler().compile(empty_dir, sys.argv[1] if len(sys.argv) > 1 else "empty_dir.yaml")
