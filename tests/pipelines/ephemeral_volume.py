"""A Kubernetes-only feature Gantry refuses at submit: kfp-kubernetes `add_ephemeral_volume`
(a volume claimed from a Kubernetes storage class for the pod's life, which agents do not
provide)."""
import sys

from kfp import compiler, dsl, kubernetes


@dsl.container_component
def print_env():
    return dsl.ContainerSpec(
        image="gantry/busybox:latest", command=["sh", "-c", "ls /scratch"]
    )


@dsl.pipeline(name="ephemeral-volume")
def ephemeral_volume():
    t = print_env()
    kubernetes.add_ephemeral_volume(
        t,
        volume_name="scratch",
        mount_path="/scratch",
        access_modes=["ReadWriteOnce"],
        size="1Gi",
    )


if __name__ == "__main__":
    compiler.Compiler().compile(
        ephemeral_volume, sys.argv[1] if len(sys.argv) > 1 else "ephemeral_volume.yaml"
    )
