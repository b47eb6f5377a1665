#!/usr/bin/env python
"""Write docs/config.md, the run-config reference, from the pydantic models in kdlab/config/models.py (described by
kdlab.schema from their JSON schema), the first-party data and architecture plugins' params models, and the metric
names of kdlab.metrics.

    python scripts/gen_config_doc.py          # rewrite docs/config.md
    python scripts/gen_config_doc.py --check  # exit 1 if docs/config.md is out of date (tests/test_config_doc.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kdlab.metrics import COSTS as COST_NOTES
from kdlab.metrics import EPOCH as EPOCH_NOTES
from kdlab.metrics import FINAL as FINAL_NOTES
from kdlab.metrics import STEPS
from kdlab.metrics import STUDY as STUDY_NOTES
from kdlab.schema import FieldDoc, describe

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "config.md"

#: Meanings of the keys, where the pydantic field has no description or a fuller one helps (a note wins).
NOTES: dict[str, str] = {
    "data": "the data source: a registered data component and its params",
    "data.name": "data component, e.g. `digits`, `mnist1d`, `cifar10`, `imagefolder` (`kdlab plugins` lists them)",
    "data.augment": "augmentation of training batches: a list of ops applied in order, each `{op: NAME, ...}` "
                    "([below](#augmentation-ops-dataaugment); [images.md](images.md)); empty: none",
    "data.loader": "how streamed splits are read (a DataLoader); in-memory splits do not use it",
    "teacher": "the teacher: trained by kdlab (once, then reused), or loaded from `checkpoint` or `mlflow_uri`; "
               "leave it out for a loss that needs no teacher (`ce`)",
    "teacher.name": "teacher architecture, e.g. `mlp`, `cnn2d`, `resnet20`, `torchvision` ([models.md](models.md))",
    "teacher.training": "how kdlab trains the teacher (with cross-entropy) when it is not loaded",
    "teacher.training.epochs": "teacher training epochs",
    "teacher.training.batch_size": "teacher training batch size",
    "teacher.training.optimizer": "the teacher's optimizer (keys as in `optimizer`)",
    "student": "the student architecture and how it starts",
    "student.name": "student architecture, e.g. `mlp`, `cnn2d`, `resnet8x4`, `timm` ([models.md](models.md))",
    "student.init": "start the student from another model's weights instead of a random initialisation",
    "student.init.checkpoint": "a state_dict file (loaded with weights_only)",
    "student.init.mlflow_uri": "an MLflow model URI or a `.pt` state_dict artifact, e.g. runs:/<id>/student",
    "loss": "the distillation loss (KD method) and its params",
    "loss.name": "loss component: `kd` (Hinton et al. 2015), `ce` (labels only, no teacher) or another method "
                 "of [methods.md](methods.md)",
    "optimizer": "the student's optimizer and learning-rate schedule",
    "optimizer.name": "optimizer",
    "optimizer.weight_decay": "L2 weight decay (decoupled for adamw)",
    "training": "the student's training loop",
    "training.epochs": "student training epochs",
    "training.batch_size": "student training batch size (rows of train + transfer per step)",
    "training.seed": "seed of the student's initialisation and batch order; the same seed gives the same "
                     "metrics on CPU",
    "training.precision": "fp32; bf16: forward passes under bfloat16 autocast; fp16: float16 autocast and a "
                          "gradient scaler (CUDA; runs on the CPU too)",
    "training.eval_batch_size": "batch size of evaluation and of computing teacher outputs",
    "tracking": "MLflow tracking",
    "tracking.enabled": "record the run in MLflow (`kdlab run --no-track` sets false)",
    "tracking.run_name": "MLflow run name (default: `<student>-<loss>-seed<seed>`)",
    "assistant.name": "the assistant's architecture (a registered teacher/student architecture)",
    "study": "a study's search space, objectives, sampler, pruner, budget, storage and devices: see "
             "[studies.md](studies.md); `kdlab run` ignores it",
}
#: types shown instead of the schema's, by key
TYPES = {"data.augment": "list of ops"}
#: sections that reuse another section's model, documented by the same notes
ALIASES = {"teacher.training.optimizer.": "optimizer."}
PARAMS_NOTE = "the component's params, validated by the params model its plugin registered"
#: Meanings of first-party component params without a description: by ``<component>.<param>``, then ``<param>``.
PARAM_NOTES: dict[str, str] = {
    "activation": "activation function",
    "batchnorm": "batch normalisation after each convolution",
    "cnn1d.stride": "stride of each convolution",
    "cnn1d.padding": "zero padding of each convolution",
    "cnn2d.kernel_size": "kernel size of each convolution (same padding)",
    "cnn2d.dropout": "dropout before the linear head",
    "mlp.dropout": "dropout after each hidden layer",
}

def default_text(f: FieldDoc) -> str:
    if f.required:
        return "**required**"
    value = f.default
    if f.is_section:
        if isinstance(value, dict) and "name" in value and "params" in value:
            return f"`{{name: {value['name']}}}`"
        return "" if value is not None else "null"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)) and not value:
        return "`[]`" if isinstance(value, list) else "`{}`"
    return f"`{value}`"


def rows(fields: list[FieldDoc], prefix: str = "", notes: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """One table row per field (key, type, default, meaning), nested sections after their own row."""
    notes = NOTES if notes is None else notes
    out = []
    for f in fields:
        key = f"{prefix}{f.name}"
        alias = next((key.replace(a, b, 1) for a, b in ALIASES.items() if key.startswith(a)), key)
        meaning = notes.get(key) or f.description or notes.get(alias, "")
        if f.name == "params" and not meaning:
            meaning = PARAMS_NOTE
        typ = ("section" if f.is_section else TYPES.get(key, f.type).replace("|", "\\|")) + (
            f" ({f.constraints})" if f.constraints else "")
        out.append((f"`{key}`", typ, default_text(f), meaning))
        if f.children and prefix.count(".") < 4:
            out += rows(f.children, key + ".", notes)
    return out


def table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    esc = [tuple(c.replace("\n", " ") for c in r) for r in body]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in esc]


def first_party_components() -> list[Any]:
    """Data sources and architectures of the first-party plugins (not whatever else is installed)."""
    import kdlab_vision.plugin  # imports neither torchvision nor timm

    import kdlab_data.plugin
    import kdlab_models.plugin
    import kdlab_text.plugin  # imports neither transformers, tokenizers nor datasets
    from kdlab.registry import Registry

    reg = Registry()
    kdlab_data.plugin.kdlab_register_data(reg.registrar("data", "kdlab-data"))
    kdlab_text.plugin.kdlab_register_data(reg.registrar("data", "kdlab-text"))
    kdlab_models.plugin.kdlab_register_teachers(reg.registrar("teacher", "kdlab-models"))
    kdlab_vision.plugin.kdlab_register_teachers(reg.registrar("teacher", "kdlab-vision"))
    kdlab_text.plugin.kdlab_register_teachers(reg.registrar("teacher", "kdlab-text"))
    return reg.all("data") + reg.all("teacher")


def epoch_metric_names() -> list[str]:
    """The names fit() gives one epoch's metrics, from a one-epoch fit of a tiny model with a `ce` term."""
    import torch

    from kdlab.config import OptimizerConfig
    from kdlab.functional import masked_cross_entropy
    from kdlab.training import TrainSet, fit
    from kdlab.types import Loss, LossOutput, Split

    class CE(Loss):
        uses_teacher = False

        def forward(self, inputs):
            ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
            return LossOutput(ce, {"ce": ce})

    torch.manual_seed(0)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    result = fit(torch.nn.Linear(2, 2), CE(), TrainSet(x, y), Split(x, y), optimizer=OptimizerConfig(), epochs=1,
                 batch_size=4, seed=0, device=torch.device("cpu"))
    return ["train_<term>" if k == "train_ce" else k for k in result.history[0]]


def augment_ops() -> list[str]:
    """A table per op of ``data.augment``, from the op models of kdlab/config/models.py."""
    import typing

    from kdlab.config import AugmentOp

    union = typing.get_args(AugmentOp)[0]
    lines = ["### Augmentation ops (`data.augment`)", "",
             "Each item of `data.augment` is one op, picked by its `op` key, with the keys below; the ops apply in",
             "order to floating-point inputs with spatial dimensions (images, signals; integer inputs pass through),",
             "each example with its own seeded choice. `normalize` also applies to evaluation data; `mixup` and",
             "`cutmix` come last. [images.md](images.md) explains the recipes and the teacher under augmentation.",
             ""]
    for model in typing.get_args(union):
        fields = [f for f in describe(model) if f.name != "op"]
        name = model.model_fields["op"].annotation.__args__[0]
        lines += [f"#### `{name}`", "", (model.__doc__ or "").strip().splitlines()[0], ""]
        body = rows(fields, "", notes={})
        lines += (table(("key", "type", "default", "meaning"), body) if body else ["No keys."]) + [""]
    return lines


def render() -> str:
    from kdlab.config import RunConfig

    lines = [
        "# Run config reference",
        "",
        "<!-- Generated by scripts/gen_config_doc.py from kdlab/config/ and the first-party plugins; do not edit",
        "     by hand: run `python scripts/gen_config_doc.py` (tests/test_config_doc.py checks it is current). -->",
        "",
        "A run file is YAML (read with a safe loader) validated by the pydantic models in `kdlab/config/models.py`.",
        "`kdlab validate FILE` checks a file without running it; every error names the file, the line, the dotted",
        "key, the value and what was expected. Any key can be overridden on the command line with",
        "`--set KEY=VALUE` (the value is read as YAML: `--set loss.params.temperature=2`,",
        "`--set student.params.hidden=[64,32]`). Unknown keys are errors.",
        "",
        "Limits ([faults.md](faults.md)): a file is UTF-8 text of at most 1 MiB, nested at most 64 levels deep,",
        "whose YAML aliases expand to at most 100000 values; numbers are finite (`.inf` and `.nan` are errors) and",
        "`true`/`false` are not numbers; seeds are in `[0, 2**32 - 1]`; a loss that distils from a teacher",
        "needs a `teacher:` section.",
        "",
        "The components `data`, `teacher`, `student` and `loss` are each `{name, params}`: `name` picks a",
        "registered component and `params` is validated by the params model its plugin registered",
        "(`kdlab plugins show NAME` prints it). The first-party data sources and architectures are listed below;",
        "the losses (KD methods) are in [methods.md](methods.md).",
        "",
        "```yaml",
        "data:",
        "  name: digits",
        "  params: {test_size: 360, val_size: 180}",
        "teacher:",
        "  name: cnn2d",
        "  params: {channels: [32, 64]}",
        "  training: {epochs: 40, batch_size: 64, optimizer: {lr: 0.003}}",
        "student:",
        "  name: mlp",
        "  params: {hidden: [32]}",
        "loss:",
        "  name: kd",
        "  params: {temperature: 4.0, alpha: 0.9}",
        "optimizer: {name: adam, lr: 0.003}",
        "training: {epochs: 30, batch_size: 128, seed: 0, device: auto}",
        "tracking: {experiment: kdlab-digits}",
        "```",
        "",
        "## Keys",
        "",
    ]
    header = ("key", "type", "default", "meaning")
    for f in describe(RunConfig):
        name = f.name
        lines += [f"### `{name}`", ""]
        meaning = NOTES.get(name) or f.description or ""
        default = default_text(f)
        req = "required" if f.required else (
            f"optional, default {default}" if default and default != "null" else "optional")
        lines += [f"{meaning[0].upper() + meaning[1:] if meaning else name} ({req}).", ""]
        if f.children:
            lines += table(header, rows(f.children, f"{name}.")) + [""]
    lines += augment_ops()
    lines += ["## Component params", "",
              "Params of the first-party data sources (`data.params`) and architectures (`teacher.params`,",
              "`student.params`: every architecture serves as teacher and as student; [models.md](models.md)",
              "describes the model zoo).", ""]
    for comp in first_party_components():
        kind = "architecture" if comp.kind == "teacher" else "data"
        lines += [f"### {kind} `{comp.name}`", "", comp.description, ""]
        fields = describe(comp.params)
        notes = {f.name: PARAM_NOTES.get(f"{comp.name}.{f.name}") or PARAM_NOTES.get(f.name, "") for f in fields}
        notes = {f.name: notes[f.name] for f in fields if notes[f.name] and not f.description}
        body = rows(fields, "", notes=notes)
        lines += (table(("param", "type", "default", "meaning"), body) if body else ["No params."]) + [""]
    lines += [
        "## Metrics",
        "",
        "Metric names are public interface: studies optimise them and the MLflow UI shows them.",
        "",
        STEPS,
        "",
        "Accuracies are exact: a count of hits over a count of examples, logged as the nearest double (941 of",
        "1000 reads 0.941).",
        "",
        "### Final metrics of a run",
        "",
        "Logged once at the end of a student run (those without a teacher omit the teacher metrics;",
        "a `student.init` run adds `init_loaded_tensors` and `frozen_params`). With `tracking.log_model` they",
        "are also the metrics of the run's logged model (its page in the UI), measured on the run's dataset input.",
        "",
    ]
    lines += table(("metric", "meaning"), [(f"`{m}`", meaning) for m, meaning in FINAL_NOTES.items()]) + [""]
    from kdlab import metrics

    lines += ["Run modes add their own final metrics: `continual:` (besides `task<k>_accuracy`), `assistant:` and",
              "`born_again:`.", ""]
    modes = {**metrics.CONTINUAL, **metrics.ASSISTANT, **metrics.BORN_AGAIN}
    lines += table(("metric", "meaning"), [(f"`{m}`", meaning) for m, meaning in modes.items()]) + [""]
    lines += ["### What the models cost", "",
              "Final metrics too, measured at the end of each student run on the run's device (the teacher once per",
              "process and device); a study may optimise `student_flops`, `flops_compression_ratio` and the",
              "latencies, e.g. beside `val_accuracy` to find the smallest student that keeps its accuracy.", ""]
    lines += table(("metric", "meaning"), [(f"`{m}`", meaning) for m, meaning in COST_NOTES.items()]) + [""]
    epoch = epoch_metric_names()
    missing = [m for m in epoch if m not in EPOCH_NOTES]
    if missing:
        raise SystemExit(f"gen_config_doc: describe the per-epoch metric(s) {', '.join(missing)} in "
                         "kdlab.metrics.EPOCH")
    lines += [
        "### Per-epoch metrics",
        "",
        "Logged for every epoch of every training run (teacher and student), MLflow step = epoch, sent in",
        "batches (`tracking.flush_every_s`); the `kdlab_epoch_end` hook receives the same names.",
        "",
    ]
    lines += table(("metric", "meaning"), [(f"`{m}`", EPOCH_NOTES[m]) for m in epoch]) + [""]
    lines += [
        "### Teacher runs",
        "",
        "A teacher trained by kdlab is its own MLflow run (tag `kdlab.role: teacher`) with the per-epoch metrics",
        "above and `teacher_test_accuracy` (also as `test_accuracy`), `teacher_val_accuracy`, `teacher_params`,",
        "`teacher_flops`, `teacher_latency_ms`, `teacher_batch_latency_ms`, `train_time_s`, `best_epoch`,",
        "`best_val_accuracy` and `best_val_loss`. A student run links to it with the tag `kdlab.teacher_run_id`; the",
        "teacher's run names the studies that used it (tag `kdlab.used_by_studies`, and its description).",
        "",
        "### Study runs",
        "",
        "The parent run `study-<name>` of a study ([studies.md](studies.md)):",
        "",
    ]
    lines += table(("metric", "meaning"), [(f"`{m}`", meaning) for m, meaning in STUDY_NOTES.items()]) + [""]
    lines += [
        "## Environment",
        "",
    ]
    lines += table(("variable", "meaning"), [
        ("`KDLAB_HOME`", "where kdlab keeps the MLflow SQLite store, artifacts, Optuna storage and caches "
                         "(default `./kdlab-runs`)"),
        ("`KDLAB_CACHE_DIR`", "the caches (teachers, teacher outputs, generated data); default `$KDLAB_HOME/cache`"),
        ("`MLFLOW_TRACKING_URI`", "MLflow tracking URI when `tracking.uri` and `--tracking-uri` are not given"),
    ]) + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config.md differs from the output")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
