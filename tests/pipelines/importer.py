"""dsl.importer with metadata from a URI given as a parameter (s3:// or file://), read by a
consumer."""
import sys

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def read(data: Input[Dataset]) -> str:
    return open(data.path).read() + "|" + str(data.metadata.get("source"))


@dsl.pipeline(name="importer")
def importer(uri: str):
    imp = dsl.importer(
        artifact_uri=uri,
        artifact_class=Dataset,
        reimport=True,
        metadata={"source": "the-test"},
    )
    read(data=imp.output)


if __name__ == "__main__":
    compiler.Compiler().compile(importer, sys.argv[1] if len(sys.argv) > 1 else "importer.yaml")
