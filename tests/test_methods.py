"""The distillation method library (kdlab_losses): each loss against values computed by hand on small fixed tensors
(explicit softmax, logs and sums, not the functions under test); gradients reach the student and the loss's own
modules (adapters, peers) and not the frozen teacher; wrong layer names and shapes fail clearly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import kdlab
from conftest import tiny_digits_config
from kdlab.config import ConfigError, Source, dump_yaml
from kdlab.plugins import get_registry
from kdlab_test_helpers import load_config

S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T = [[2.0, 1.0, 0.0], [1.0, 0.0, 2.0]]
Y = [1, 2]


def softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def build(name: str, **params) -> kdlab.Loss:
    comp = get_registry().get("loss", name)
    return comp.build(comp.validate_params(params))


def inputs(s=S, t=T, y=Y, **kw) -> kdlab.LossInputs:
    return kdlab.LossInputs(x=torch.zeros(len(s), 1), labels=torch.tensor(y), student_logits=torch.tensor(s),
                            teacher_logits=None if t is None else torch.tensor(t), **kw)


def approx(tensor, value, rel=1e-5):
    return float(tensor) == pytest.approx(value, rel=rel, abs=1e-7)


# -- logit-based ---------------------------------------------------------------------------------------------------


def test_hard_uses_teacher_argmax_as_labels():
    out = build("hard", alpha=0.3)(inputs(y=[1, -1]))
    ce = -math.log(softmax(S[0])[1])  # the labelled row only
    hard = (-math.log(softmax(S[0])[0]) - math.log(softmax(S[1])[2])) / 2  # argmax of T: 0 and 2
    assert approx(out.terms["ce"], ce) and approx(out.terms["hard"], hard)
    assert approx(out.total, 0.7 * ce + 0.3 * hard)


def test_label_smoothing_matches_hand_value_and_needs_no_teacher():
    loss = build("ls", epsilon=0.2)
    assert loss.uses_teacher is False
    out = loss(inputs(t=None))
    want = 0.0
    for s, y in zip(S, Y):
        logp = [math.log(p) for p in softmax(s)]
        target = [0.2 / 3 + (0.8 if k == y else 0.0) for k in range(3)]
        want -= sum(a * b for a, b in zip(target, logp)) / 2
    assert approx(out.total, want)


def _hand_dkd(s, t, y, temp):
    ps, pt = softmax(s, temp), softmax(t, temp)
    bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
    ns = softmax([v for k, v in enumerate(s) if k != y], temp)
    nt = softmax([v for k, v in enumerate(t) if k != y], temp)
    return kl(bt, bs), kl(nt, ns)


def test_dkd_matches_hand_computed_tckd_and_nckd():
    out = build("dkd", alpha=1.0, beta=8.0, temperature=4.0)(inputs())
    terms = [_hand_dkd(s, t, y, 4.0) for s, t, y in zip(S, T, Y)]
    tckd, nckd = sum(a for a, _ in terms) / 2, sum(b for _, b in terms) / 2
    ce = sum(-math.log(softmax(s)[y]) for s, y in zip(S, Y)) / 2
    assert approx(out.terms["tckd"], tckd) and approx(out.terms["nckd"], nckd)
    assert approx(out.total, ce + 16 * (tckd + 8 * nckd))


def test_dkd_defaults_are_the_papers_and_warmup_ramps():
    p = get_registry().get("loss", "dkd").validate_params({})
    assert (p.alpha, p.beta, p.temperature) == (1.0, 8.0, 4.0)
    loss = build("dkd", warmup_epochs=4)
    half = loss(inputs(epoch=2, epochs=10))
    ce = float(half.terms["ce"])
    full = float(build("dkd")(inputs()).total) - ce
    assert approx(half.total, ce + full / 2, rel=1e-4)


def test_dkd_unlabeled_rows_take_the_teacher_argmax_as_target():
    out = build("dkd")(inputs(y=[-1, -1]))
    terms = [_hand_dkd(s, t, int(max(range(3), key=t.__getitem__)), 4.0) for s, t in zip(S, T)]
    assert approx(out.terms["tckd"], sum(a for a, _ in terms) / 2)
    assert float(out.terms["ce"]) == 0.0


def test_multi_teacher_mixes_soft_targets_by_weight():
    loss = build("multi", temperature=2.0, alpha=1.0)
    t2 = [[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]]

    class Fixed(nn.Module):
        def forward(self, x):
            return torch.tensor(t2)

    loss.extra = [Fixed()]
    loss.weights = torch.tensor([3.0, 1.0])  # normalised to 0.75 / 0.25
    out = loss(inputs())
    want = 0.0
    for s, ta, tb in zip(S, T, t2):
        mix = [0.75 * a + 0.25 * b for a, b in zip(softmax(ta, 2.0), softmax(tb, 2.0))]
        want += 4 * kl(mix, softmax(s, 2.0)) / 2
    assert approx(out.total, want)


def test_multi_weights_must_match_the_teachers():
    cfg = tiny_digits_config(**{"loss.name": "multi", "loss.params": {"weights": [0.5, 0.5]}})
    with pytest.raises(ConfigError, match="weights has 2 entries for 1 teachers"):
        load_config(Source("run.yaml", dump_yaml(cfg)))


# -- feature-based -------------------------------------------------------------------------------------------------


def test_fitnet_hint_is_mse_through_the_adapter():
    loss = build("fitnet", student_layer="a", teacher_layer="b", beta=10.0)
    from kdlab_losses.features import Adapter

    loss.adapter = Adapter((2,), (2,))
    with torch.no_grad():
        loss.adapter.map.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        loss.adapter.map.bias.zero_()
    out = loss(inputs(student_features={"a": torch.tensor([[1.0, 2.0], [0.0, 1.0]])},
                      teacher_features={"b": torch.tensor([[1.0, 1.0], [1.0, 0.0]])}))
    hint = ((2 - 1) ** 2 + (2 - 1) ** 2 + (0 - 1) ** 2 + (1 - 0) ** 2) / 4
    assert approx(out.terms["hint"], hint)
    assert approx(out.total, float(out.terms["ce"]) + 10 * hint)


def test_attention_map_and_at_loss_by_hand():
    from kdlab_losses.features import attention_map

    f = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])  # (N=1, C=2, L=2): mean_c f^2 = [5, 2]
    assert torch.allclose(attention_map(f), torch.tensor([[5.0, 2.0]]) / math.sqrt(29))
    loss = build("at", student_layers=["a"], teacher_layers=["b"], beta=2.0)
    g = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # mean_c = [0, 1]
    out = loss(inputs(s=[S[0]], t=[T[0]], y=[1], student_features={"a": f}, teacher_features={"b": g}))
    qs = [5 / math.sqrt(29), 2 / math.sqrt(29)]
    at = ((qs[0] - 0) ** 2 + (qs[1] - 1) ** 2) / 2
    assert approx(out.terms["at"], at)
    assert approx(out.total, float(out.terms["ce"]) + at)


def test_at_treats_flat_features_as_units_and_pools_to_the_shorter_map():
    loss = build("at", student_layers=["a"], teacher_layers=["b"])
    flat = torch.tensor([[1.0, 1.0, 2.0, 0.0]])  # 4 units -> squares [1, 1, 4, 0] -> pooled to 2: [1, 2]
    conv = torch.tensor([[[1.0, 2.0]]])  # (1, 1, 2) -> [1, 4]
    out = loss(inputs(s=[S[0]], t=[T[0]], y=[1], student_features={"a": flat}, teacher_features={"b": conv}))
    qs = torch.nn.functional.normalize(torch.tensor([1.0, 2.0]), dim=0)
    qt = torch.nn.functional.normalize(torch.tensor([1.0, 4.0]), dim=0)
    assert approx(out.terms["at"], float(((qs - qt) ** 2).mean()))


# -- relation-based ------------------------------------------------------------------------------------------------


def test_rkd_distance_and_angle_terms_by_hand():
    s = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    t = [[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]
    out = build("rkd")(inputs(s=s, t=t, y=[0, 1, 0]))

    def dists(e):
        d = {(i, j): math.dist(e[i], e[j]) for i in range(3) for j in range(3)}
        mean = sum(v for (i, j), v in d.items() if i != j) / 6
        return [d[i, j] / mean for i in range(3) for j in range(3)]

    def angles(e):
        out = []
        for j in range(3):
            for i in range(3):
                for k in range(3):
                    a = [e[i][c] - e[j][c] for c in range(2)]
                    b = [e[k][c] - e[j][c] for c in range(2)]
                    na, nb = math.hypot(*a), math.hypot(*b)
                    out.append(0.0 if na == 0 or nb == 0 else (a[0] * b[0] + a[1] * b[1]) / (na * nb))
        return out

    def huber(xs, ys):
        return sum(0.5 * (x - y) ** 2 if abs(x - y) < 1 else abs(x - y) - 0.5 for x, y in zip(xs, ys)) / len(xs)

    assert approx(out.terms["rkd_distance"], huber(dists(s), dists(t)), rel=1e-4)
    assert approx(out.terms["rkd_angle"], huber(angles(s), angles(t)), rel=1e-4)


def test_pkt_by_hand():
    s = [[1.0, 0.0], [0.0, 1.0]]
    t = [[1.0, 0.0], [1.0, 1.0]]
    out = build("pkt")(inputs(s=s, t=t, y=[0, 1]))

    def cond(e):
        n = [[v / math.hypot(*r) for v in r] for r in e]
        k = [[(sum(a * b for a, b in zip(n[i], n[j])) + 1) / 2 for j in range(2)] for i in range(2)]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt = cond(s), cond(t)
    assert approx(out.terms["pkt"], (kl(pt[0], ps[0]) + kl(pt[1], ps[1])) / 2, rel=1e-4)


# -- online --------------------------------------------------------------------------------------------------------


class Const(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits


def test_dml_each_network_gets_ce_plus_mimicry_of_the_others():
    loss = build("dml")
    assert loss.uses_teacher is False and loss.live_teacher is True
    loss.peers = nn.ModuleList([Const(T)])
    out = loss(inputs(t=None))
    ce_s = sum(-math.log(softmax(s)[y]) for s, y in zip(S, Y)) / 2
    ce_p = sum(-math.log(softmax(t)[y]) for t, y in zip(T, Y)) / 2
    kl_s = sum(kl(softmax(t), softmax(s)) for s, t in zip(S, T)) / 2
    kl_p = sum(kl(softmax(s), softmax(t)) for s, t in zip(S, T)) / 2
    assert approx(out.terms["mimicry"], kl_s) and approx(out.terms["peer_mimicry"], kl_p)
    assert approx(out.total, ce_s + ce_p + kl_s + kl_p)


def test_aux_joint_loss_by_hand():
    loss = build("aux", aux_weight=0.5, kd_weight=2.0, temperature=2.0, mutual=False)
    loss.aux = Const(T)
    out = loss(inputs(t=None))
    ce_s = sum(-math.log(softmax(s)[y]) for s, y in zip(S, Y)) / 2
    ce_a = sum(-math.log(softmax(t)[y]) for t, y in zip(T, Y)) / 2
    kd = 4 * sum(kl(softmax(t, 2.0), softmax(s, 2.0)) for s, t in zip(S, T)) / 2
    assert approx(out.total, ce_s + 0.5 * ce_a + 2.0 * kd)


# -- gradients: student, adapters and peers learn; the frozen teacher does not ----------------------------------------


def _mlp(hidden, seed):
    torch.manual_seed(seed)
    from kdlab_models.nets import MLP, MLPParams

    return MLP(MLPParams(hidden=hidden), (8,), 3)


PARAMS = {
    "hard": {}, "dkd": {}, "multi": {}, "fitnet": {"student_layer": "blocks.1", "teacher_layer": "blocks.0"},
    "at": {"student_layers": ["blocks.0"], "teacher_layers": ["blocks.0"]},
    "rkd": {"student_layer": "blocks.1", "teacher_layer": "blocks.0"},
    "pkt": {"student_layer": "blocks.1", "teacher_layer": "blocks.0"},
    "dml": {}, "aux": {}, "ls": {}, "kd": {},
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_gradients_reach_student_and_loss_modules_not_the_teacher(name):
    from kdlab.capture import FeatureCapture

    student, teacher = _mlp([6, 5], 0), _mlp([7], 1)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss = build(name, **PARAMS[name])
    x = torch.randn(6, 8)
    loss.setup(kdlab.LossSetup(student=student, teacher=teacher, input_shape=(8,), num_classes=3,
                               device=torch.device("cpu"), build_model=lambda kind, n, p: _mlp([4], 2),
                               example_x=x))
    s_cap = FeatureCapture(student, loss.student_layers, key="k", owner="the student")
    t_cap = FeatureCapture(teacher, loss.teacher_layers, key="k", owner="the teacher")
    out = loss(kdlab.LossInputs(x=x, labels=torch.tensor([0, 1, 2, 0, -1, -1]), student_logits=student(x),
                                teacher_logits=teacher(x), student_features=s_cap.take(),
                                teacher_features=t_cap.take()))
    out.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.head.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    own = list(loss.parameters())
    if name in ("fitnet", "dml", "aux"):
        assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)


def test_feature_loss_trains_adapter_and_leaves_teacher_unchanged_in_a_run():
    from kdlab.modes import run

    cfg = tiny_digits_config(**{"loss.name": "fitnet", "tracking.enabled": False,
                                "loss.params": {"student_layer": "blocks.0", "teacher_layer": "blocks.0"}})
    loaded = load_config(Source("run.yaml", dump_yaml(cfg)))
    from kdlab.distill import build_loss
    from kdlab.session import Session

    session = Session()
    result = run(loaded, session=session)
    assert result.fit.history[-1]["train_hint"] > 0
    before = {k: v.clone() for k, v in result.teacher.model.state_dict().items()}
    run(loaded, session=session)  # the same teacher object, distilled again
    assert all(torch.equal(before[k], v) for k, v in result.teacher.model.state_dict().items())
    assert isinstance(build_loss(loaded), kdlab.Loss)


def test_dml_peers_are_trained_by_the_engine():
    from kdlab.modes import run

    cfg = tiny_digits_config(**{"loss.name": "dml", "loss.params": {}, "tracking.enabled": False})
    result = run(load_config(Source("run.yaml", dump_yaml(cfg))))
    history = result.fit.history
    assert history[-1]["train_peer_ce"] < history[0]["train_peer_ce"]


# -- clear errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,owner", [("student_layer", "the student"), ("teacher_layer", "the teacher")])
def test_wrong_layer_name_lists_the_modules(key, owner):
    from kdlab.modes import run

    params = {"student_layer": "blocks.0", "teacher_layer": "blocks.0", key: "blocks.7"}
    cfg = tiny_digits_config(**{"loss.name": "fitnet", "loss.params": params, "tracking.enabled": False})
    with pytest.raises(kdlab.KdlabError) as info:
        run(load_config(Source("run.yaml", dump_yaml(cfg))))
    msg = str(info.value)
    assert f"{owner} has no module 'blocks.7'" in msg and "did you mean 'blocks.0'" in msg
    assert "Its modules: blocks, blocks.0, blocks.0.0, blocks.0.1, head" in msg


def test_at_layers_must_pair_up():
    cfg = tiny_digits_config(**{"loss.name": "at", "loss.params": {"student_layers": ["a", "b"],
                                                                   "teacher_layers": ["a"]}})
    with pytest.raises(ConfigError, match="must pair up"):
        load_config(Source("run.yaml", dump_yaml(cfg)))


def test_at_maps_of_different_sizes_fail_clearly_without_resize():
    loss = build("at", student_layers=["blocks.0"], teacher_layers=["blocks.0"], resize=False)
    with pytest.raises(kdlab.KdlabError, match=r"attention maps of student 'blocks.0' \(6 positions\) and teacher "
                                               r"'blocks.0' \(7 positions\) differ"):
        loss.setup(kdlab.LossSetup(student=_mlp([6], 0), teacher=_mlp([7], 1), input_shape=(8,), num_classes=3,
                                   device=torch.device("cpu"), build_model=None, example_x=torch.randn(2, 8)))


def test_every_method_has_a_paper_and_described_params():
    for comp in get_registry().all("loss"):
        if comp.name != "ce":
            assert comp.extra.get("paper"), comp.name
        for field_name, field in comp.params.model_fields.items():
            assert field.description, f"{comp.name}.{field_name}"


# -- transfer-learning initialisation ------------------------------------------------------------------------------


def test_student_init_from_checkpoint_with_frozen_layers(tmp_path):
    from kdlab.modes import run

    source = _mlp([16], 5)
    from kdlab_models.nets import MLP, MLPParams

    source = MLP(MLPParams(hidden=[16]), (1, 8, 8), 10)
    path = tmp_path / "source.pt"
    torch.save(source.state_dict(), path)
    cfg = tiny_digits_config(**{"loss.name": "ce", "loss.params": {}, "tracking.enabled": False,
                                "student.init": {"checkpoint": str(path), "freeze": ["blocks.0"]}})
    result = run(load_config(Source("run.yaml", dump_yaml(cfg))))
    assert result.metrics["init_loaded_tensors"] == 4 and result.metrics["frozen_params"] == 64 * 16 + 16
    state = result.student.state_dict()
    assert torch.equal(state["blocks.0.0.weight"], source.state_dict()["blocks.0.0.weight"])  # frozen
    assert not torch.equal(state["head.weight"], source.state_dict()["head.weight"])  # fine-tuned


# -- docs and study ------------------------------------------------------------------------------------------------


def test_methods_doc_matches_the_generator():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("gen_methods_doc", root / "scripts" / "gen_methods_doc.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    components = [c for c in get_registry().all("loss") if c.plugin == "kdlab-losses"]
    text = (root / "docs" / "methods.md").read_text()
    assert text == gen.render(components), (
        "docs/methods.md is stale: run .venv/bin/python scripts/gen_methods_doc.py > docs/methods.md")
    for c in components:  # every method has its section, its paper and, where it declares one, its search space
        section = text.split(f"\n## {c.name}\n", 1)[1].split("\n## ", 1)[0]
        assert c.name == "ce" or f"Paper: {c.extra['paper']}." in section
        for key in c.extra["search_space"]:
            assert f"`{key}` " in section.split("Search space", 1)[1].split("\n", 1)[0], (c.name, key)


def test_methods_study_file_is_valid():
    from pathlib import Path

    from kdlab.study.config import load_study_config

    path = Path(__file__).resolve().parent.parent / "studies" / "mnist1d-methods.yaml"
    study = load_study_config(load_config(path)).study
    assert {"kd", "dkd", "fitnet", "dml"} <= set(study.search["loss.name"].choices)
    assert {"loss.params.temperature", "loss.params.alpha", "optimizer.lr"} <= set(study.search)


def test_multi_teacher_builds_trains_and_reuses_extra_teachers():
    from kdlab.modes import Session, run

    extra = {"name": "mlp", "params": {"hidden": [32]}, "training": {"epochs": 2, "seed": 3}}
    cfg = tiny_digits_config(**{"loss.name": "multi", "tracking.enabled": False,
                                "loss.params": {"teachers": [extra], "weights": [0.7, 0.3]}})
    loaded = load_config(Source("run.yaml", dump_yaml(cfg)))
    session = Session()
    run(loaded, session=session)
    assert len(session.teachers) == 2  # the configured teacher and the extra one, each trained once
    models = [t.model for t in session.teachers.values()]
    assert all(not p.requires_grad for m in models for p in m.parameters())
    run(loaded, session=session)
    assert len(session.teachers) == 2  # reused, not trained again


def test_multi_extra_teacher_errors_name_the_problem():
    from kdlab.modes import run

    cfg = tiny_digits_config(**{"loss.name": "multi", "tracking.enabled": False,
                                "loss.params": {"teachers": [{"name": "mlp", "params": {"hiden": [3]}}]}})
    with pytest.raises(ConfigError, match=r"(?s)loss.params.teachers.0, as a teacher section.*teacher.params.hiden"):
        run(load_config(Source("run.yaml", dump_yaml(cfg))))


def test_teacher_init_fine_tunes_a_source_model_and_is_another_teacher(tmp_path):
    from kdlab.modes import Session, run
    from kdlab_models.nets import MLP, MLPParams

    source = MLP(MLPParams(hidden=[64]), (1, 8, 8), 10)
    path = tmp_path / "source.pt"
    torch.save(source.state_dict(), path)
    session = Session()
    plain = tiny_digits_config(**{"tracking.enabled": False})
    run(load_config(Source("run.yaml", dump_yaml(plain))), session=session)
    cfg = tiny_digits_config(**{"tracking.enabled": False,
                                "teacher.init": {"checkpoint": str(path), "freeze": ["blocks.0"]}})
    result = run(load_config(Source("run.yaml", dump_yaml(cfg))), session=session)
    assert len(session.teachers) == 2  # the fine-tuned teacher has its own fingerprint
    teacher = result.teacher
    assert teacher.metrics["frozen_params"] == 64 * 64 + 64
    assert torch.equal(teacher.model.state_dict()["blocks.0.0.weight"], source.state_dict()["blocks.0.0.weight"])
    assert not torch.equal(teacher.model.state_dict()["head.weight"], source.state_dict()["head.weight"])
