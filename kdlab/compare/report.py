"""The comparison's results per method (seeds, setting, summaries) and its markdown table."""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from kdlab.compare.stats import mean_std, paired_gain


@dataclass
class MethodResult:
    title: str
    loss: str
    setting: dict[str, Any]
    seeds: dict[int, dict[str, float]] = field(default_factory=dict)
    trials: int = 0
    note: str = ""
    #: filled in by :func:`markdown` from the baseline's seeds
    gain: tuple[float, float, float] | None = None

    def add(self, seed: int, values: dict[str, float]) -> None:
        self.seeds[seed] = values

    def values(self, key: str) -> list[float]:
        return [self.seeds[s][key] for s in sorted(self.seeds)]

    def metrics(self) -> dict[str, float]:
        """The method's summary as MLflow metrics of its child run."""
        if not self.seeds:
            return {}
        out = {}
        for key in ("test_accuracy", "last_epoch_test_accuracy", "val_accuracy"):
            mean, sd = mean_std(self.values(key))
            out[f"{key}_mean"], out[f"{key}_std"] = mean, sd
        out["time_per_epoch_s"] = mean_std(self.values("time_per_epoch_s"))[0]
        out["student_params"] = self.values("student_params")[0]
        if self.gain is not None:
            out["gain_mean"], out["gain_ci_low"], out["gain_ci_high"] = self.gain
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.title, "loss": self.loss, "setting": self.setting, "trials": self.trials,
                "seeds": self.seeds, "summary": self.metrics(), "note": self.note}


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _setting(setting: dict[str, Any]) -> str:
    if not setting:
        return "defaults"
    parts = []
    for k, v in setting.items():
        short = k.removeprefix("loss.params.").removeprefix("optimizer.")
        parts.append(f"{short}={v:.3g}" if isinstance(v, float) else f"{short}={v}")
    return ", ".join(parts)


def markdown(name: str, results: list[MethodResult], cmp, source: str) -> str:
    """The table: each method tuned, retrained on the seeds; the gain over the baseline paired by seed."""
    base = results[0]
    for r in results[1:]:
        if r.seeds and base.seeds and sorted(r.seeds) == sorted(base.seeds):
            r.gain = paired_gain(r.values("test_accuracy"), base.values("test_accuracy"))
    ranked = [base] + sorted(results[1:], key=lambda r: -(r.gain[0] if r.gain else -math.inf))
    seeds = sorted(base.seeds)
    lines = [
        f"# Methods compared at their tuned best: {name}",
        "",
        f"From `kdlab compare {source}`: each method's own search space (declared by its plugin) and the shared "
        f"dimensions searched by a study of {cmp.n_trials} trials on validation accuracy; the best setting then "
        f"retrained with seeds {', '.join(map(str, seeds))} beside the `{cmp.baseline}` baseline on the same seeds.",
        "",
        "Accuracies are test accuracy in %, mean ± sample std over the seeds, of the **best validation epoch's "
        "weights** (`training.keep_best`); the last epoch's are in their own column. The gain is over the baseline, "
        "paired by seed, with its 95% confidence interval (Student's t).",
        "",
        "| method | test acc. (best epoch) | gain over baseline [95% CI] | last epoch | s / epoch | student params "
        "| tuned setting |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ranked:
        if not r.seeds:
            lines.append(f"| `{r.title}` | — | — | — | — | — | {r.note or 'not run'} |")
            continue
        m = r.metrics()
        acc = f"{_pct(m['test_accuracy_mean'])} ± {_pct(m['test_accuracy_std'])}"
        last = f"{_pct(m['last_epoch_test_accuracy_mean'])} ± {_pct(m['last_epoch_test_accuracy_std'])}"
        gain = "—" if r.gain is None else (f"{100 * r.gain[0]:+.2f} [{100 * r.gain[1]:+.2f}, {100 * r.gain[2]:+.2f}]"
                                           if len(seeds) > 1 else f"{100 * r.gain[0]:+.2f}")
        lines.append(f"| `{r.title}` | {acc} | {gain} | {last} | {m['time_per_epoch_s']:.3f} | "
                     f"{int(m['student_params']):,} | {_setting(r.setting)} |")
    lines += ["", f"Machine: {platform.machine()}, Python {platform.python_version()}, "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
    return "\n".join(lines) + "\n"
