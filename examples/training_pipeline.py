"""The Kubeflow guide's training example, unmodified kfp code.

preprocess -> train -> evaluate -> deploy only if the model is accurate enough.
Compile: python3 examples/training_pipeline.py training.yaml
"""
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE, packages_to_install=[])
def preprocess(test_size: float, train: Output[Dataset], test: Output[Dataset]) -> int:
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    iris = load_iris(as_frame=True)
    df = iris.frame
    tr, te = train_test_split(df, test_size=test_size, random_state=42, stratify=df["target"])
    tr.to_csv(train.path, index=False)
    te.to_csv(test.path, index=False)
    train.metadata["rows"] = len(tr)
    test.metadata["rows"] = len(te)
    return len(tr)


@dsl.component(base_image=IMAGE)
def train(train: Input[Dataset], n_estimators: int, model: Output[Model]):
    import joblib
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    df = pd.read_csv(train.path)
    clf = RandomForestClassifier(n_estimators=n_estimators, random_state=0)
    clf.fit(df.drop(columns=["target"]), df["target"])
    joblib.dump(clf, model.path)
    model.metadata["framework"] = "scikit-learn"
    model.metadata["n_estimators"] = n_estimators


@dsl.component(base_image=IMAGE)
def evaluate(test: Input[Dataset], model: Input[Model], metrics: Output[Metrics]) -> float:
    import joblib
    import pandas as pd

    df = pd.read_csv(test.path)
    clf = joblib.load(model.path)
    accuracy = float(clf.score(df.drop(columns=["target"]), df["target"]))
    metrics.log_metric("accuracy", accuracy)
    return accuracy


@dsl.component(base_image=IMAGE)
def deploy(model: Input[Model], accuracy: float) -> str:
    print(f"deploying {model.uri} (accuracy {accuracy:.3f})")
    return f"deployed with accuracy {accuracy:.3f}"


@dsl.pipeline(name="iris-training", description="preprocess, train, evaluate, deploy if accurate")
def training_pipeline(test_size: float = 0.3, n_estimators: int = 50, min_accuracy: float = 0.9):
    data = preprocess(test_size=test_size)
    model = train(train=data.outputs["train"], n_estimators=n_estimators)
    ev = evaluate(test=data.outputs["test"], model=model.outputs["model"])
    with dsl.If(ev.outputs["Output"] >= min_accuracy):
        deploy(model=model.outputs["model"], accuracy=ev.outputs["Output"])


if __name__ == "__main__":
    import sys

    compiler.Compiler().compile(training_pipeline, sys.argv[1] if len(sys.argv) > 1 else "training.yaml")
