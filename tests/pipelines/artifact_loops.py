"""dsl.ParallelFor over a list of artifacts (KFP issue 12033): a nested pipeline whose loop makes
one artifact per text and returns them collected with dsl.Collected, then a loop in the root
over that list, each iteration reading one artifact."""
import sys
from typing import List

from kfp import compiler, dsl
from kfp.dsl import Artifact

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def make_artifact(data: str) -> Artifact:
    artifact = Artifact(uri=dsl.get_uri(), metadata={"length": len(data)})
    with open(artifact.path, "w") as f:
        f.write(data)
    return artifact


@dsl.component(base_image=IMAGE)
def print_artifact_name(artifact: Artifact) -> str:
    print(artifact.name)
    return artifact.name


@dsl.pipeline(name="make-artifacts")
def make_artifacts(texts: List[str] = ["Hello", ",", " ", "world!"]) -> List[Artifact]:
    with dsl.ParallelFor(texts) as text:
        made = make_artifact(data=text)
    return dsl.Collected(made.output)


@dsl.pipeline(name="artifact-loops")
def artifact_loops():
    made = make_artifacts()
    with dsl.ParallelFor(made.output) as artifact:
        print_artifact_name(artifact=artifact)


if __name__ == "__main__":
    compiler.Compiler().compile(
        artifact_loops, sys.argv[1] if len(sys.argv) > 1 else "artifact_loops.yaml"
    )
