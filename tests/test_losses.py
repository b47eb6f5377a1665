"""The first-party losses against values computed by hand (explicit softmax and logs, not the functions under test)."""

from __future__ import annotations

import math

import pytest
import torch

import kdlab
from kdlab_losses.logits import CEParams, CrossEntropy, HintonKD, KDParams

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [1.0, 0.0, 2.0]]
LABELS = [1, 2]


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _hand_kd(student, teacher, labels, temperature, alpha):
    """(1-alpha) * mean CE over labelled rows + alpha * T^2 * mean over rows of KL(p_teacher || p_student)."""
    ces, kls = [], []
    for s, t, y in zip(student, teacher, labels):
        if y != -1:
            ces.append(-math.log(_softmax(s, 1.0)[y]))
        ps, pt = _softmax(s, temperature), _softmax(t, temperature)
        kls.append(sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt)))
    ce = sum(ces) / len(ces)
    kd = temperature**2 * sum(kls) / len(kls)
    return ce, kd, (1 - alpha) * ce + alpha * kd


def _inputs(student, teacher, labels):
    s = torch.tensor(student, dtype=torch.float64)
    return kdlab.LossInputs(x=torch.zeros(len(student), 1), labels=torch.tensor(labels), student_logits=s,
                            teacher_logits=torch.tensor(teacher, dtype=torch.float64))


@pytest.mark.parametrize("temperature,alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 0.0), (3.0, 1.0)])
def test_kd_equals_hand_computed_value(temperature, alpha):
    out = HintonKD(KDParams(temperature=temperature, alpha=alpha))(_inputs(STUDENT, TEACHER, LABELS))
    ce, kd, total = _hand_kd(STUDENT, TEACHER, LABELS, temperature, alpha)
    assert set(out.terms) == {"ce", "kd"}
    assert out.terms["ce"].item() == pytest.approx(ce, rel=1e-9)
    assert out.terms["kd"].item() == pytest.approx(kd, rel=1e-9)
    assert out.total.item() == pytest.approx(total, rel=1e-9)


def test_kd_fixed_number():
    # pinned once from the hand computation above, so that a change in both would still be caught
    out = HintonKD(KDParams(temperature=2.0, alpha=0.5))(_inputs(STUDENT, TEACHER, LABELS))
    _, _, total = _hand_kd(STUDENT, TEACHER, LABELS, 2.0, 0.5)
    assert out.total.item() == pytest.approx(total, rel=1e-9)
    assert total == pytest.approx(0.356798, abs=1e-6)  # numpy, independently


def test_kd_is_zero_when_student_equals_teacher():
    out = HintonKD(KDParams(temperature=3.0, alpha=1.0))(_inputs(TEACHER, TEACHER, LABELS))
    assert out.terms["kd"].item() == pytest.approx(0.0, abs=1e-12)
    assert out.total.item() == pytest.approx(0.0, abs=1e-12)


def test_kd_unlabeled_rows_get_the_soft_term_only():
    labels = [1, kdlab.UNLABELED]
    out = HintonKD(KDParams(temperature=4.0, alpha=0.7))(_inputs(STUDENT, TEACHER, labels))
    ce, kd, total = _hand_kd(STUDENT, TEACHER, labels, 4.0, 0.7)
    assert out.terms["ce"].item() == pytest.approx(ce, rel=1e-9)  # the CE of row 0 alone
    assert out.terms["kd"].item() == pytest.approx(kd, rel=1e-9)  # both rows
    assert out.total.item() == pytest.approx(total, rel=1e-9)


def test_ce_ignores_unlabeled_rows():
    loss = CrossEntropy(CEParams())
    assert loss.uses_teacher is False
    student = STUDENT + [[9.0, -9.0, 0.0]]
    out = loss(kdlab.LossInputs(x=torch.zeros(3, 1), labels=torch.tensor([1, 2, kdlab.UNLABELED]),
                                student_logits=torch.tensor(student, dtype=torch.float64)))
    expected = (-math.log(_softmax(STUDENT[0], 1.0)[1]) - math.log(_softmax(STUDENT[1], 1.0)[2])) / 2
    assert set(out.terms) == {"ce"}
    assert out.total.item() == pytest.approx(expected, rel=1e-9)


def test_ce_all_unlabeled_is_zero_with_a_gradient_path():
    logits = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    out = CrossEntropy(CEParams())(kdlab.LossInputs(x=torch.zeros(2, 1), labels=torch.tensor([-1, -1]),
                                                    student_logits=logits))
    assert out.total.item() == 0.0
    out.total.backward()
    assert torch.all(logits.grad == 0)


def test_kd_gradient_flows_to_student_only():
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER)
    out = HintonKD(KDParams())(kdlab.LossInputs(x=torch.zeros(2, 1), labels=torch.tensor(LABELS), student_logits=s,
                                                teacher_logits=t))
    out.total.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
