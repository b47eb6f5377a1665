"""Metric names kdlab logs, with their meaning: public interface (studies optimise them, the MLflow UI shows them,
``docs/config.md`` is generated from here)."""

from __future__ import annotations

#: final metrics of a student run (a run without a teacher omits the teacher ones)
FINAL: dict[str, str] = {
    "test_accuracy": "the student's top-1 accuracy on the test split (with the kept weights, see "
                     "`training.keep_best`)",
    "val_accuracy": "the student's validation accuracy with the kept weights; in MLflow it is the `val_accuracy` "
                    "curve's value at step `best_epoch` (not logged a second time)",
    "teacher_test_accuracy": "the teacher's top-1 accuracy on the test split",
    "teacher_val_accuracy": "the teacher's accuracy on the validation split",
    "student_params": "number of student parameters",
    "teacher_params": "number of teacher parameters",
    "compression_ratio": "teacher_params / student_params",
    "agreement": "share of test examples on which student and teacher predict the same class (top-1)",
    "train_time_s": "seconds spent in the student's training loop",
    "best_epoch": "the epoch with the best validation accuracy (whose weights are kept with "
                  "`training.keep_best`)",
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
                               "train_time_s", "teacher_val_accuracy")

#: the order in which `kdlab run` prints a run's final metrics
SHOWN: tuple[str, ...] = ("test_accuracy", "val_accuracy", "old_task_accuracy", "new_task_accuracy", "forgetting",
                          "teacher_test_accuracy", "assistant_test_accuracy", "ensemble_test_accuracy", "agreement",
                          "student_params", "teacher_params", "compression_ratio", "train_time_s")
