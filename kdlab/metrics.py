"""Metric names kdlab logs, with their meaning: public interface (studies optimise them, the MLflow UI shows them,
``docs/config.md`` is generated from here)."""

from __future__ import annotations

#: final metrics of a student run (a run without a teacher omits the teacher ones)
FINAL: dict[str, str] = {
    "test_accuracy": "the student's top-1 accuracy on the test split (with the kept weights, see "
                     "`training.keep_best`)",
    "val_accuracy": "the kept weights' validation accuracy: what a study optimises. In MLflow `val_accuracy` is "
                    "the per-epoch curve only (one point per epoch); the kept value is `best_val_accuracy` with "
                    "`training.keep_best` (the default), the curve's last point without it",
    "best_val_accuracy": "the validation accuracy of the best epoch (`best_epoch`), whose weights are kept with "
                         "`training.keep_best`",
    "best_val_loss": "the validation loss at `best_epoch`",
    "best_epoch": "the epoch with the best validation accuracy (whose weights are kept with "
                  "`training.keep_best`)",
    "teacher_test_accuracy": "the teacher's top-1 accuracy on the test split",
    "teacher_val_accuracy": "the teacher's accuracy on the validation split",
    "student_params": "number of student parameters",
    "teacher_params": "number of teacher parameters",
    "compression_ratio": "teacher_params / student_params",
    "agreement": "share of test examples on which student and teacher predict the same class (top-1)",
    "train_time_s": "seconds spent in the student's training loop",
}

#: what the student and the teacher cost to run, measured at the end of a run (``kdlab.costs``)
COSTS: dict[str, str] = {
    "student_flops": "floating-point operations of one forward pass over one example (a multiply-add counts 2; "
                     "matrix products and convolutions, counted by `torch.utils.flop_counter`)",
    "teacher_flops": "the same for the teacher",
    "flops_compression_ratio": "teacher_flops / student_flops",
    "student_latency_ms": "median milliseconds of one forward pass over one example on the run's device (eval "
                          "mode, no autograd, after a warm-up; up to 25 repeats within about a second)",
    "student_batch_latency_ms": "the same for a batch of 256 examples (fewer when the validation split is "
                                "smaller)",
    "teacher_latency_ms": "the teacher's latency for one example, measured the same way",
    "teacher_batch_latency_ms": "the teacher's latency for a batch of 256 examples",
}

#: where final metrics sit on MLflow's step axis (public: the UI's charts and `get_metric_history` read it)
STEPS = ("Per-epoch metrics are logged at step = epoch (1, 2, ...). A run's final metrics are logged once, at the "
         "step of its last epoch trained (a cached teacher's record: at its `teacher.training.epochs`); no final "
         "metric reuses the name of a per-epoch curve, so every metric has one point per step. A study run's summary "
         "metrics are logged at step 0, its per-trial metrics at step = trial number.")

#: metrics of a study's parent run (``study-<name>``)
STUDY: dict[str, str] = {
    "trials/<objective>": "each complete trial's objective value (e.g. `trials/val_accuracy`), at step = trial "
                          "number; `trials/best_<objective>`: the best value so far (single objective). The UI "
                          "groups them as the section `trials`, drawn as lines over the trials, above the summary",
    "best_<metric>": "the best trial's final metrics (`best_val_accuracy`, `best_test_accuracy`, "
                     "`best_student_params`, `best_student_flops`, ...; the first of the Pareto front when there "
                     "are several objectives)",
    "best_trial_number": "the best trial's number",
    "trials_<state>": "number of trials per state: `trials_complete`, `trials_pruned`, `trials_fail`",
    "baseline_test_accuracy": "the `ce` baseline's test accuracy (`baseline_val_accuracy`: its validation "
                              "accuracy with the kept weights)",
    "teacher_test_accuracy": "the teacher's test accuracy (`teacher_val_accuracy`: on the validation split)",
}

#: metrics of one epoch, logged for every epoch of every training run (MLflow step = epoch)
EPOCH: dict[str, str] = {
    "train_loss": "mean total loss over the epoch's training rows",
    "train_<term>": "mean of each named loss term, e.g. `train_ce`, `train_kd`",
    "val_accuracy": "accuracy on the validation split after the epoch",
    "val_loss": "cross-entropy on the validation split after the epoch",
    "lr": "learning rate at the end of the epoch",
    "epoch_time_s": "seconds the epoch took",
}

#: final metrics of a continual-learning run (``continual:``), besides ``task<k>_accuracy``
CONTINUAL: dict[str, str] = {
    "old_task_accuracy": "mean test accuracy over the earlier tasks, at the end",
    "new_task_accuracy": "test accuracy on the last task",
    "forgetting": "mean over the earlier tasks of the accuracy right after learning the task minus at the end",
}

#: final metrics of a teacher-assistant chain (``assistant:``), besides the student's own
ASSISTANT: dict[str, str] = {
    "assistant_test_accuracy": "the assistant's test accuracy",
    "assistant_val_accuracy": "the assistant's validation accuracy",
    "original_teacher_test_accuracy": "the original teacher's test accuracy",
}

#: final metrics of born-again generations (``born_again:``), besides the last generation's own
BORN_AGAIN: dict[str, str] = {
    "generation<k>_test_accuracy": "test accuracy of generation k (0: the teacher trained here, or the first "
                                   "student when a teacher is configured)",
    "ensemble_test_accuracy": "test accuracy of the generations' averaged softmax (BANE), with `born_again.ensemble`",
}

#: final metrics a study may optimise (test metrics are recorded, never optimised)
OBJECTIVES: tuple[str, ...] = ("val_accuracy", "val_loss", "agreement", "student_params", "compression_ratio",
                               "train_time_s", "teacher_val_accuracy", "student_flops", "flops_compression_ratio",
                               "student_latency_ms", "student_batch_latency_ms")

#: the order in which `kdlab run` prints a run's final metrics
SHOWN: tuple[str, ...] = ("test_accuracy", "val_accuracy", "old_task_accuracy", "new_task_accuracy", "forgetting",
                          "teacher_test_accuracy", "assistant_test_accuracy", "ensemble_test_accuracy", "agreement",
                          "student_params", "teacher_params", "compression_ratio", "student_flops",
                          "flops_compression_ratio", "student_latency_ms", "train_time_s")
