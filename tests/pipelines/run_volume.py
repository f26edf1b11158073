"""Volumes a run makes for itself: kfp-kubernetes `CreatePVC`, mounted by a producer and by the
two iterations of a loop that read what it wrote, then `DeletePVC`. A second pipeline has a
workspace (`dsl.PipelineConfig(workspace=...)`): one step writes a file under
`dsl.WORKSPACE_PATH_PLACEHOLDER`, the next reads it by the path the first returned."""
import sys

from kfp import compiler, dsl, kubernetes


@dsl.container_component
def produce():
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-ec", "echo hello-claim > /data/file.txt"],
    )


@dsl.container_component
def consume(item: int, text: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-ec", 'echo "$(cat /data/file.txt) $1" > "$0"', text, item],
    )


@dsl.pipeline(name="run-volume")
def run_volume():
    pvc = kubernetes.CreatePVC(
        pvc_name_suffix="-scratch",
        access_modes=["ReadWriteOnce"],
        size="5Mi",
        storage_class_name="standard",
    )
    p = produce()
    kubernetes.mount_pvc(p, pvc_name=pvc.outputs["name"], mount_path="/data")
    with dsl.ParallelFor([1, 2]) as i:
        c = consume(item=i)
        kubernetes.mount_pvc(c, pvc_name=pvc.outputs["name"], mount_path="/data")
        c.after(p)
    kubernetes.DeletePVC(pvc_name=pvc.outputs["name"]).after(c)


@dsl.container_component
def write(workspace: str, path: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-ec", 'echo in-workspace > "$0/f.txt" && printf %s "$0/f.txt" > "$1"',
                 workspace, path],
    )


@dsl.container_component
def read(file: str, text: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest", command=["sh", "-ec", 'cat "$0" > "$1"', file, text]
    )


@dsl.pipeline(
    name="workspace",
    pipeline_config=dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(size="1Gi")),
)
def workspace():
    w = write(workspace=dsl.WORKSPACE_PATH_PLACEHOLDER)
    read(file=w.outputs["path"])


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "run_volume.yaml"
    compiler.Compiler().compile(run_volume, out)
    compiler.Compiler().compile(workspace, out.replace(".yaml", "") + "_workspace.yaml")
