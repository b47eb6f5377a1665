"""A teacher's identity: its architecture, params, plugin version and code, data (and its augmentation, which the
teacher is trained under and whose deterministic ops its outputs see), and where its weights come from (the
checkpoint's bytes, the MLflow URI, or the training settings and init)."""

from __future__ import annotations

from typing import Any

from kdlab.config import LoadedConfig
from kdlab.files import code_digest, digest, file_digest
from kdlab.session import CACHE_VERSION, data_fingerprint
from kdlab.weights import existing_file


def teacher_fingerprint(loaded: LoadedConfig) -> str:
    t = loaded.config.teacher
    assert t is not None
    comp = loaded.components["teacher"]
    source: dict[str, Any]
    if t.checkpoint:
        source = {"checkpoint": file_digest(existing_file(t.checkpoint, "teacher.checkpoint"))}
    elif t.mlflow_uri:
        source = {"mlflow_uri": t.mlflow_uri}
    else:
        source = {"training": t.training.model_dump(mode="json", exclude={"augment"})}
        if t.init is not None:  # a teacher fine-tuned from a source model is another teacher
            init = t.init.model_dump(mode="json")
            if t.init.checkpoint:
                init["checkpoint"] = file_digest(existing_file(t.init.checkpoint, "teacher.init.checkpoint"))
            source["init"] = init
    identity = {"v": CACHE_VERSION, "name": t.name, "params": t.params, "source": source,
                "plugin": comp.distribution, "version": comp.version, "code": code_digest(comp.factory),
                "data": data_fingerprint(loaded)}
    augment = loaded.config.data.augment
    if augment:  # without augmentation the identity is what it always was (caches stay valid)
        identity["augment"] = {"ops": [op.model_dump(mode="json") for op in augment],
                               "trained_with": bool(t.training.augment and "training" in source)}
    return digest(identity)
