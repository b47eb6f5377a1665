"""The methods added to kdlab_losses after the first dozen: each against a value computed by hand on tiny tensors
(plain Python or plain torch, not the loss's own helpers); gradients reach the student and the loss's own
parameters; a short real run on digits; CRD's memory bank; RKD's fast angle term against the implementation it
replaced; every loss's declared search space."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from test_methods import approx, build
from torch import nn

import kdlab
from conftest import tiny_digits_config
from kdlab.config import Source, dump_yaml
from kdlab.plugins import get_registry
from kdlab_test_helpers import load_config

S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.5, 0.5, -1.0]]
T = [[2.0, 1.0, 0.0], [1.0, 0.0, 2.0], [-1.0, 1.5, 0.0]]
Y = [1, 2, 0]


def softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def mean(xs):
    return sum(xs) / len(xs)


def ce_of(s=S, y=Y):
    return mean([-math.log(softmax(r)[k]) for r, k in zip(s, y) if k != -1])


def inputs(s=S, t=T, y=Y, **kw) -> kdlab.LossInputs:
    return kdlab.LossInputs(x=torch.zeros(len(s), 1), labels=torch.tensor(y), student_logits=torch.tensor(s),
                            teacher_logits=None if t is None else torch.tensor(t), **kw)


def _setup(loss, student, teacher, x, n=0):
    loss.setup(kdlab.LossSetup(student=student, teacher=teacher, input_shape=tuple(x.shape[1:]), num_classes=3,
                               device=torch.device("cpu"), build_model=None, example_x=x, num_examples=n))
    return loss


# -- logit methods -------------------------------------------------------------------------------------------------


def pearson(a, b):
    ma, mb = mean(a), mean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / (math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b)))


def test_dist_inter_and_intra_class_correlations_by_hand():
    out = build("dist", beta=2.0, gamma=0.5, tau=2.0)(inputs())
    ps, pt = [softmax(r, 2.0) for r in S], [softmax(r, 2.0) for r in T]
    inter = 4 * (1 - mean([pearson(a, b) for a, b in zip(ps, pt)]))
    cols = range(3)
    intra = 4 * (1 - mean([pearson([r[c] for r in ps], [r[c] for r in pt]) for c in cols]))
    assert approx(out.terms["inter"], inter) and approx(out.terms["intra"], intra)
    assert approx(out.total, ce_of() + 2 * inter + 0.5 * intra)


def test_dist_defaults_are_the_papers():
    p = get_registry().get("loss", "dist").validate_params({})
    assert (p.beta, p.gamma, p.tau) == (1.0, 1.0, 1.0)


def _hand_nkd(s, t, y, lam, gamma):
    target = -softmax(t)[y] * math.log(softmax(s)[y])
    ns = softmax([v for k, v in enumerate(s) if k != y], lam)
    nt = softmax([v for k, v in enumerate(t) if k != y], lam)
    non = -lam**2 * sum(a * math.log(b) for a, b in zip(nt, ns))
    return target, gamma * non


def test_nkd_target_and_normalized_non_target_terms_by_hand():
    out = build("nkd", temperature=2.0, gamma=1.5)(inputs())
    terms = [_hand_nkd(s, t, y, 2.0, 1.5) for s, t, y in zip(S, T, Y)]
    target, non = mean([a for a, _ in terms]), mean([b for _, b in terms])
    assert approx(out.terms["nkd_target"], target) and approx(out.terms["nkd_non_target"], non / 1.5)
    assert approx(out.total, ce_of() + target + non)


def test_nkd_unlabeled_rows_take_the_teacher_argmax():
    out = build("nkd")(inputs(y=[-1, 2, -1]))
    ys = [0, 2, 1]  # argmax of T's rows 0 and 2
    terms = [_hand_nkd(s, t, y, 1.0, 1.5) for s, t, y in zip(S, T, ys)]
    assert approx(out.terms["nkd_target"], mean([a for a, _ in terms]))
    assert approx(out.total, ce_of(y=[-1, 2, -1]) + sum(mean(x) for x in zip(*terms)))


def zscore(row):
    m, sd = mean(row), statistics.stdev(row)  # unbiased, as the authors' torch.std
    return [(v - m) / (1e-7 + sd) for v in row]


def test_kd_std_standardizes_both_logits_before_the_softmax():
    out = build("kd_std", temperature=2.0, ce_weight=0.1, kd_weight=9.0)(inputs())
    kd = mean([4 * kl(softmax(zscore(t), 2.0), softmax(zscore(s), 2.0)) for s, t in zip(S, T)])
    assert approx(out.terms["kd"], kd)
    assert approx(out.total, 0.1 * ce_of() + 9 * kd)
    # invariant to a shift and a positive scale of either logits: only their relations count
    moved = build("kd_std")(inputs(s=[[3 * v + 1 for v in r] for r in S]))
    assert approx(moved.terms["kd"], float(build("kd_std")(inputs()).terms["kd"]), rel=1e-4)


def _hand_kd(s, t, temp):
    return mean([temp**2 * kl(softmax(b, temp), softmax(a, temp)) for a, b in zip(s, t)])


def test_ctkd_temperature_starts_from_the_authors_init_and_kd_uses_it():
    loss = build("ctkd", alpha=0.9)
    temp = 1 + 20 / (1 + math.exp(-1.0))  # t_min + t_range * sigmoid(theta = 1)
    out = loss(inputs(epoch=3, epochs=10))
    assert approx(out.terms["ctkd_temperature"], temp)
    assert approx(out.terms["kd"], _hand_kd(S, T, temp), rel=1e-4)
    assert approx(out.total, 0.1 * ce_of() + 0.9 * _hand_kd(S, T, temp), rel=1e-4)


def test_ctkd_curriculum_is_a_cosine_from_0_to_lambda_max():
    loss = build("ctkd", lambda_max=0.8, curriculum_epochs=10)
    assert loss.reversal(5, 240) == pytest.approx(0.4)
    assert loss.reversal(10, 240) == pytest.approx(0.8) and loss.reversal(30, 240) == pytest.approx(0.8)
    assert loss.reversal(1, 240) == pytest.approx(0.8 * (1 - math.cos(math.pi / 10)) / 2)
    whole = build("ctkd", curriculum_epochs=None)
    assert whole.reversal(2, 4) == pytest.approx(0.5) and whole.reversal(4, 4) == pytest.approx(1.0)


def test_ctkd_temperature_ascends_the_kd_loss_through_the_reversal():
    """theta's gradient is the plain gradient of the loss times -lambda(epoch): the temperature maximises KD."""
    loss = build("ctkd", curriculum_epochs=10)
    loss(inputs(epoch=5, epochs=10)).total.backward()
    theta = torch.tensor(1.0, requires_grad=True)
    temp = 1 + 20 * torch.sigmoid(theta)
    s, t = torch.tensor(S), torch.tensor(T)
    kd = temp**2 * torch.nn.functional.kl_div(torch.log_softmax(s / temp, 1), torch.softmax(t / temp, 1),
                                              reduction="batchmean")
    (0.9 * kd).backward()
    assert float(theta.grad) != 0
    # float32 cancellations in a gradient this small: the sign and size here, the exact scale below
    assert float(loss.theta.grad) == pytest.approx(-0.5 * float(theta.grad), rel=2e-2)
    half = float(loss.theta.grad)
    loss.theta.grad = None
    loss(inputs(epoch=10, epochs=10)).total.backward()
    assert float(loss.theta.grad) == pytest.approx(2 * half, rel=1e-6)


def test_mlkd_instance_batch_and_class_levels_by_hand():
    temps = [2.0, 4.0]
    out = build("mlkd", temperatures=temps, ce_weight=0.5, kd_weight=2.0)(inputs())
    ins = batch = cls = 0.0
    for temp in temps:
        ps, pt = [softmax(r, temp) for r in S], [softmax(r, temp) for r in T]
        ins += mean([temp**2 * kl(b, a) for a, b in zip(ps, pt)])
        n, c = len(ps), len(ps[0])
        batch += sum((sum(ps[i][k] * ps[j][k] for k in range(c)) - sum(pt[i][k] * pt[j][k] for k in range(c))) ** 2
                     for i in range(n) for j in range(n)) / n
        cls += sum((sum(ps[i][a] * ps[i][b] for i in range(n)) - sum(pt[i][a] * pt[i][b] for i in range(n))) ** 2
                   for a in range(c) for b in range(c)) / c
    assert approx(out.terms["mlkd_instance"], ins) and approx(out.terms["mlkd_batch"], batch, rel=1e-4)
    assert approx(out.terms["mlkd_class"], cls, rel=1e-4)
    assert approx(out.total, 0.5 * ce_of() + 2 * (ins + batch + cls), rel=1e-5)


def test_mlkd_default_temperatures_are_the_papers():
    assert get_registry().get("loss", "mlkd").validate_params({}).temperatures == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_wsld_weights_each_row_by_the_ratio_of_label_losses():
    out = build("wsld", temperature=2.0, alpha=2.5)(inputs())
    terms = []
    for s, t, y in zip(S, T, Y):
        ce_s, ce_t = -math.log(softmax(s)[y]), -math.log(softmax(t)[y])
        w = 1 - math.exp(-max(ce_s / (ce_t + 1e-7), 0))
        soft = -sum(a * math.log(b) for a, b in zip(softmax(t, 2.0), softmax(s, 2.0)))
        terms.append(w * soft)
    wsl = 4 * mean(terms)
    assert approx(out.terms["wsl"], wsl)
    assert approx(out.total, ce_of() + 2.5 * wsl)


def test_tf_reg_virtual_teacher_by_hand_and_needs_no_teacher():
    loss = build("tf_reg", a=0.9, temperature=5.0, alpha=0.3, weight=2.0)
    assert loss.uses_teacher is False
    out = loss(inputs(t=None))
    regs = []
    for s, y in zip(S, Y):
        u = [0.9 if k == y else 0.05 for k in range(3)]
        regs.append(kl(softmax(u, 5.0), softmax(s)))
    assert approx(out.terms["tf_reg"], mean(regs))
    assert approx(out.total, 0.7 * ce_of() + 0.3 * 2.0 * mean(regs))


# -- relation and feature methods ----------------------------------------------------------------------------------

FS = [[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [0.0, 1.0, 1.0]]  # 3 rows of a student layer
FT = [[1.0, 1.0], [0.0, 2.0], [1.0, 0.5]]  # the teacher's, of another width


def _normalised_gram(rows):
    g = [[sum(a * b for a, b in zip(r, q)) for q in rows] for r in rows]
    return [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in g]


def test_sp_by_hand():
    out = build("sp", student_layers=["a"], teacher_layers=["b"], beta=10.0)(
        inputs(student_features={"a": torch.tensor(FS)}, teacher_features={"b": torch.tensor(FT)}))
    gs, gt = _normalised_gram(FS), _normalised_gram(FT)
    sp = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert approx(out.terms["sp"], sp)
    assert approx(out.total, ce_of() + 10 * sp)


def test_cc_taylor_rbf_correlation_by_hand():
    out = build("cc", student_layer="a", teacher_layer="b", gamma=0.5, order=2, beta=3.0)(
        inputs(student_features={"a": torch.tensor(FS)}, teacher_features={"b": torch.tensor(FT)}))

    def corr(rows):
        unit = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]
        out = []
        for a in unit:
            for b in unit:
                c = sum(x * y for x, y in zip(a, b))
                out.append(sum(math.exp(-1.0) * 1.0**p / math.factorial(p) * c**p for p in range(3)))
        return out

    cc = mean([(a - b) ** 2 for a, b in zip(corr(FS), corr(FT))])
    assert approx(out.terms["cc"], cc)
    assert approx(out.total, ce_of() + 3 * cc)


def test_cc_taylor_approaches_the_gaussian_kernel():
    from kdlab_losses.relations import rbf_correlation

    e = torch.tensor(FS)
    unit = torch.nn.functional.normalize(e, dim=1)
    exact = torch.exp(-0.4 * torch.cdist(unit, unit) ** 2)
    assert torch.allclose(rbf_correlation(e, 0.4, 10), exact, atol=1e-6)


def test_vid_gaussian_likelihood_by_hand():
    from kdlab_models.nets import MLP, MLPParams

    loss = build("vid", student_layers=["blocks.0"], teacher_layers=["blocks.0"], beta=2.0)
    _setup(loss, MLP(MLPParams(hidden=[3]), (4,), 3), MLP(MLPParams(hidden=[2]), (4,), 3), torch.randn(4, 4))
    reg = loss.regressors[0]
    assert torch.allclose(torch.nn.functional.softplus(reg.alpha) + 1e-5, torch.full((2,), 5.0))
    with torch.no_grad():
        reg.alpha.copy_(torch.tensor([0.0, 1.0]))
    fs, ft = torch.tensor(FS), torch.tensor(FT)
    out = loss(inputs(student_features={"blocks.0": fs}, teacher_features={"blocks.0": ft}))
    w1, w2, w3 = (m.weight for m in reg.mean if isinstance(m, nn.Linear))
    mu = torch.relu(torch.relu(fs @ w1.T) @ w2.T) @ w3.T
    var = torch.log1p(torch.exp(torch.tensor([0.0, 1.0]))) + 1e-5
    vid = (0.5 * ((mu - ft) ** 2 / var + torch.log(var))).mean()
    assert approx(out.terms["vid"], float(vid))
    assert approx(out.total, ce_of() + 2 * float(vid))


def test_vid_conv_pairs_regress_channels_with_1x1_convolutions():
    from kdlab_models.nets import CNN1D, CNN1DParams

    student = CNN1D(CNN1DParams(channels=[3, 4]), (20,), 3)
    teacher = CNN1D(CNN1DParams(channels=[5, 6]), (20,), 3)
    loss = _setup(build("vid", student_layers=["blocks.0"], teacher_layers=["blocks.1"]), student, teacher,
                  torch.randn(4, 20))
    reg = loss.regressors[0]
    assert reg.conv and reg.mean[0].weight.shape == (6, 3, 1) and reg.alpha.shape == (6,)


def test_nst_polynomial_mmd_by_hand():
    fs = [[[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]]]  # (N=1, C=2, L=3)
    ft = [[[1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]]  # (N=1, C=3, L=3)
    out = build("nst", student_layers=["a"], teacher_layers=["b"], beta=4.0)(
        inputs(s=S[:1], t=T[:1], y=Y[:1], student_features={"a": torch.tensor(fs)},
               teacher_features={"b": torch.tensor(ft)}))

    def unit(rows):
        return [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]

    def k(a, b):
        return mean([sum(x * y for x, y in zip(p, q)) ** 2 for p in a for q in b])

    s, t = unit(fs[0]), unit(ft[0])
    mmd = k(s, s) + k(t, t) - 2 * k(s, t)
    assert approx(out.terms["nst"], mmd)
    assert approx(out.total, ce_of(S[:1], Y[:1]) + 4 * mmd)


def test_ab_alternative_l2_with_depth_weights_by_hand():
    loss = build("ab", student_layers=["a", "b"], teacher_layers=["c", "d"], margin=1.0, beta=2.0)
    loss.connectors = nn.ModuleList([nn.Identity(), nn.Identity()])  # the loss through the raw pre-activations
    src = [[0.5, -2.0, 0.2], [-0.5, 1.5, 0.0]]
    tgt = [[-1.0, 1.0, 0.0], [2.0, 0.5, -3.0]]
    out = loss(inputs(s=S[:2], t=T[:2], y=Y[:2], student_features={"a": torch.tensor(src), "b": torch.tensor(src)},
                      teacher_features={"c": torch.tensor(tgt), "d": torch.tensor(tgt)}))

    def alt(s, t):
        if t <= 0:
            return (s + 1) ** 2 if s > -1 else 0.0
        return (s - 1) ** 2 if s <= 1 else 0.0

    per_pair = sum(alt(s, t) for rs, rt in zip(src, tgt) for s, t in zip(rs, rt)) / 2
    ab = (0.5 * per_pair + 1.0 * per_pair) * 3 / 1000  # shallower pair half the deepest
    assert approx(out.terms["ab"], ab)
    assert approx(out.total, ce_of(S[:2], Y[:2]) + 2 * ab)


def test_hcl_pools_to_4_2_1_with_halving_weights():
    from kdlab_losses.review import hcl

    torch.manual_seed(0)
    fs, ft = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)

    def mse(a, b):
        return float(((a - b) ** 2).mean())

    def pool(f, n):  # average over n x n blocks of equal size
        k = 4 // n
        return f.reshape(2, 3, n, k, n, k).mean((3, 5))

    want = (mse(fs, ft) + 0.5 * mse(pool(fs, 2), pool(ft, 2)) + 0.25 * mse(pool(fs, 1), pool(ft, 1))) / 1.75
    assert approx(hcl(fs, ft), want)
    assert approx(hcl(fs[..., :1, :1], ft[..., :1, :1]), mse(fs[..., :1, :1], ft[..., :1, :1]))  # 1 position: MSE


def test_reviewkd_abf_fuses_the_deeper_residual_by_attention():
    """Two flat stages (maps of one position), every map made an identity: the shallow output is
    k * (0.5 * k * x_shallow + 0.75 * k * x_deep), k the eval-mode batch norm's 1/sqrt(1 + eps)."""
    loss = build("reviewkd", student_layers=["a", "b"], teacher_layers=["c", "d"], weight=2.0)
    from kdlab_models.nets import MLP, MLPParams

    net = MLP(MLPParams(hidden=[2, 2]), (4,), 3)
    loss.student_layers = loss.teacher_layers = ("blocks.0", "blocks.1")
    _setup(loss, net, net, torch.randn(4, 4))
    loss.eval()
    with torch.no_grad():
        for abf in loss.abfs:
            abf.conv1[0].weight.copy_(torch.eye(2).view(2, 2, 1))
            w = torch.zeros(2, 2, 3)
            w[:, :, 1] = torch.eye(2)
            abf.conv2[0].weight.copy_(w)
        att = loss.abfs[0].att[0]
        att.weight.zero_()
        att.bias.copy_(torch.tensor([0.0, math.log(3.0)]))  # sigmoid: 0.5 and 0.75
    x0, x1 = torch.tensor([[1.0, 2.0]]), torch.tensor([[-1.0, 4.0]])
    shallow, deep = loss.reviewed([x0, x1])
    k = 1 / math.sqrt(1 + 1e-5)
    assert torch.allclose(deep.flatten(), k * k * x1.flatten(), atol=1e-6)
    assert torch.allclose(shallow.flatten(), k * (0.5 * k * x0 + 0.75 * k * x1).flatten(), atol=1e-6)
    t0, t1 = torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 2.0]])
    out = loss(inputs(s=S[:1], t=T[:1], y=Y[:1], student_features={"blocks.0": x0, "blocks.1": x1},
                      teacher_features={"blocks.0": t0, "blocks.1": t1}))
    review = float(((shallow.flatten() - t0.flatten()) ** 2).mean() + ((deep.flatten() - t1.flatten()) ** 2).mean())
    assert approx(out.terms["review"], review)
    assert approx(out.total, ce_of(S[:1], Y[:1]) + 2 * review)


@pytest.mark.parametrize("kind", ["cnn1d", "cnn2d"])
def test_reviewkd_runs_on_conv_stages(kind):
    from kdlab_models.nets import CNN1D, CNN2D, CNN1DParams, CNN2DParams

    if kind == "cnn1d":
        shape = (24,)
        student, teacher = CNN1D(CNN1DParams(channels=[3, 4]), shape, 3), CNN1D(CNN1DParams(channels=[5, 6]), shape, 3)
    else:
        shape = (1, 8, 8)
        student, teacher = CNN2D(CNN2DParams(channels=[3, 4]), shape, 3), CNN2D(CNN2DParams(channels=[5, 6]), shape, 3)
    x = torch.randn(4, *shape)
    loss = _setup(build("reviewkd"), student, teacher, x)
    _check_gradients(loss, student, teacher, x)


# -- CRD -----------------------------------------------------------------------------------------------------------


class Unit(nn.Module):
    """An embedding head that only normalises (no parameters): embeddings chosen by hand."""

    def forward(self, f):
        return torch.nn.functional.normalize(f.flatten(1), dim=1)


def _crd(n=4, **params):
    from kdlab_models.nets import MLP, MLPParams

    loss = build("crd", student_layer="blocks.0", teacher_layer="blocks.0", feat_dim=2, **params)
    net = MLP(MLPParams(hidden=[2]), (4,), 3)
    return _setup(loss, net, net, torch.randn(4, 4), n=n)


def test_crd_nce_value_by_hand():
    loss = _crd(n=4, nce_k=2, nce_t=0.5, nce_m=0.5)
    loss.embed_s, loss.embed_t = Unit(), Unit()
    mem_s = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]]
    mem_t = [[0.0, 1.0], [0.8, 0.6], [1.0, 0.0], [0.0, -1.0]]
    with torch.no_grad():
        loss.memory_s.copy_(torch.tensor(mem_s))
        loss.memory_t.copy_(torch.tensor(mem_t))
    loss.negatives = lambda device: torch.tensor([3, 0])
    v_s, v_t = [[0.6, 0.8], [1.0, 0.0]], [[0.0, 1.0], [0.8, -0.6]]
    idx = [2, 1]
    feats = {"student_features": {"blocks.0": torch.tensor(v_s)}, "teacher_features": {"blocks.0": torch.tensor(v_t)}}
    out = loss(inputs(s=S[:2], t=T[:2], y=Y[:2], index=torch.tensor(idx), **feats))

    def scores(v, mem):
        return [[math.exp(sum(a * b for a, b in zip(v[i], mem[j])) / 0.5) for j in (idx[i], 3, 0)]
                for i in range(2)]

    def nce(rows):
        z = mean([x for r in rows for x in r]) * 4  # fixed on the first batch
        noise = 2 / 4
        total = 0.0
        for r in rows:
            p = [x / z for x in r]
            total += math.log(p[0] / (p[0] + noise + 1e-7))
            total += sum(math.log(noise / (q + noise + 1e-7)) for q in p[1:])
        return -total / len(rows)

    crd = nce(scores(v_s, mem_t)) + nce(scores(v_t, mem_s))
    assert approx(out.terms["crd"], crd)
    assert approx(out.total, ce_of(S[:2], Y[:2]) + 0.8 * crd)
    # the batch's memory rows move towards its embeddings, renormalised; the others stay
    for mem, v, name in ((mem_s, v_s, "memory_s"), (mem_t, v_t, "memory_t")):
        bank = getattr(loss, name)
        for row, i in enumerate(idx):
            new = [0.5 * a + 0.5 * b for a, b in zip(mem[i], v[row])]
            norm = math.sqrt(sum(x * x for x in new))
            assert torch.allclose(bank[i], torch.tensor([x / norm for x in new]), atol=1e-6)
        for i in {0, 3}:
            assert torch.equal(bank[i], torch.tensor(mem[i]))


def test_crd_memory_bank_rows_are_per_index():
    loss = _crd(n=6, nce_k=3)
    before = loss.memory_s.clone()
    feats = torch.randn(3, 2)
    out = loss(inputs(index=torch.tensor([4, 0, 2]), student_features={"blocks.0": feats},
                      teacher_features={"blocks.0": feats}))
    assert torch.isfinite(out.total)
    changed = (loss.memory_s != before).any(1)
    assert changed.tolist() == [True, False, True, False, True, False]
    rows = loss.memory_s[[4, 0, 2]]
    assert torch.allclose(rows.norm(dim=1), torch.ones(3))
    assert len({tuple(r.tolist()) for r in rows}) == 3  # one distinct row per example
    loss.eval()  # no update outside training
    frozen = loss.memory_s.clone()
    loss(inputs(index=torch.tensor([1, 3, 5]), student_features={"blocks.0": feats},
                teacher_features={"blocks.0": feats}))
    assert torch.equal(loss.memory_s, frozen)


def test_crd_without_index_or_row_count_fails_clearly():
    loss = _crd(n=4)
    with pytest.raises(kdlab.KdlabError, match=r"loss 'crd' needs each row's position.*index=None"):
        loss(inputs(student_features={"blocks.0": torch.randn(3, 2)}, teacher_features={"blocks.0": torch.randn(3, 2)}))
    with pytest.raises(kdlab.KdlabError, match=r"loss 'crd' .*num_examples"):
        _crd(n=0)


def test_fit_passes_each_rows_stable_position():
    """The engine's training loop gives every batch the positions of its rows in the training rows."""
    from kdlab.config import OptimizerConfig
    from kdlab.training import TrainSet, fit
    from kdlab.types import Split

    seen = []

    class Record(kdlab.Loss):
        uses_teacher = False

        def forward(self, inputs):
            seen.append((inputs.index.clone(), inputs.x[:, 0].clone()))
            ce = torch.nn.functional.cross_entropy(inputs.student_logits, inputs.labels)
            return kdlab.LossOutput(total=ce, terms={"ce": ce})

    x = torch.arange(10.0).view(10, 1)
    fit(nn.Linear(1, 2), Record(), TrainSet(x, torch.zeros(10, dtype=torch.int64)), Split(x, torch.zeros(10).long()),
        optimizer=OptimizerConfig(), epochs=2, batch_size=4, seed=0, device=torch.device("cpu"))
    for index, rows in seen:
        assert index.dtype == torch.int64 and torch.equal(x[index, 0], rows)
    assert sorted(torch.cat([i for i, _ in seen[:3]]).tolist()) == list(range(10))


# -- gradients, and short real runs --------------------------------------------------------------------------------


def _mlp(hidden, seed):
    torch.manual_seed(seed)
    from kdlab_models.nets import MLP, MLPParams

    return MLP(MLPParams(hidden=hidden), (8,), 3)


#: params for a student with blocks.0 and blocks.1 and a teacher with blocks.0 only
GRAD_PARAMS = {
    "dist": {},
    "nkd": {},
    "kd_std": {},
    "ctkd": {"curriculum_epochs": None},
    "mlkd": {},
    "wsld": {},
    "tf_reg": {},
    "sp": {"student_layers": ["blocks.1"], "teacher_layers": ["blocks.0"]},
    "cc": {"student_layer": "blocks.1", "teacher_layer": "blocks.0"},
    "vid": {"student_layers": ["blocks.0", "blocks.1"], "teacher_layers": ["blocks.0", "blocks.0"]},
    "reviewkd": {"student_layers": ["blocks.0", "blocks.1"], "teacher_layers": ["blocks.0", "blocks.0"]},
    "nst": {"student_layers": ["blocks.1"], "teacher_layers": ["blocks.0"]},
    "ab": {"student_layers": ["blocks.0.0", "blocks.1.0"], "teacher_layers": ["blocks.0.0", "blocks.0.0"]},
    "crd": {"student_layer": "blocks.1", "teacher_layer": "blocks.0", "nce_k": 16},
}
OWN_PARAMS = {"ctkd", "vid", "crd", "reviewkd", "ab"}


def _check_gradients(loss, student, teacher, x):
    from kdlab.capture import FeatureCapture

    s_cap = FeatureCapture(student, loss.student_layers, key="k", owner="the student")
    t_cap = FeatureCapture(teacher, loss.teacher_layers, key="k", owner="the teacher")
    labels = torch.tensor([0, 1, 2, 0, -1, -1][: len(x)])
    with torch.no_grad():
        t_logits = teacher(x)
    out = loss(kdlab.LossInputs(x=x, labels=labels, student_logits=student(x), teacher_logits=t_logits,
                                student_features=s_cap.take(), teacher_features=t_cap.take(), epoch=1, epochs=2,
                                index=torch.arange(len(x))))
    s_cap.close()
    t_cap.close()
    assert all(torch.isfinite(v) for v in [out.total, *out.terms.values()])
    out.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.head.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    return out


@pytest.mark.parametrize("name", sorted(GRAD_PARAMS))
def test_gradients_reach_the_student_and_the_loss_parameters(name):
    student, teacher = _mlp([6, 5], 0), _mlp([7], 1)
    teacher.eval().requires_grad_(False)
    x = torch.randn(6, 8)
    loss = _setup(build(name, **GRAD_PARAMS[name]), student, teacher, x, n=6)
    _check_gradients(loss, student, teacher, x)
    own = [p for p in loss.parameters() if p.requires_grad]
    assert bool(own) == (name in OWN_PARAMS)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in loss.named_parameters()
               if not n.startswith("abfs.0.att"))  # the deepest stage has nothing to fuse


#: params for tiny_digits_config's student (hidden [16]) and teacher (hidden [64]): blocks.0 on both sides
RUN_PARAMS = {
    **{name: {} for name in ("dist", "nkd", "kd_std", "ctkd", "mlkd", "wsld", "tf_reg")},
    **{name: {"student_layers": ["blocks.0"], "teacher_layers": ["blocks.0"]} for name in ("sp", "vid", "reviewkd",
                                                                                           "nst")},
    "cc": {"student_layer": "blocks.0", "teacher_layer": "blocks.0"},
    "crd": {"student_layer": "blocks.0", "teacher_layer": "blocks.0"},
    "ab": {"student_layers": ["blocks.0.0"], "teacher_layers": ["blocks.0.0"]},
}


@pytest.fixture(scope="module")
def session():
    from kdlab.session import Session

    return Session()  # the teacher is trained once for all the runs


@pytest.mark.parametrize("name", sorted(RUN_PARAMS))
def test_method_runs_end_to_end_on_digits(name, session):
    from kdlab.modes import run

    cfg = tiny_digits_config(**{"loss.name": name, "loss.params": RUN_PARAMS[name], "tracking.enabled": False,
                                "training.epochs": 2})
    result = run(load_config(Source("run.yaml", dump_yaml(cfg))), session=session)
    last = result.fit.history[-1]
    terms = {k for k in last if k.startswith("train_")} - {"train_loss", "train_ce"}
    assert terms and all(math.isfinite(last[k]) for k in terms | {"train_loss"})
    assert math.isfinite(result.metrics["test_accuracy"]) and result.fit.epochs_run == 2


def test_crd_runs_with_transfer_rows_in_its_memory_bank(session):
    from kdlab.modes import run

    cfg = tiny_digits_config(**{"loss.name": "crd", "loss.params": {**RUN_PARAMS["crd"], "nce_k": 256},
                                "tracking.enabled": False, "training.epochs": 1,
                                "data.params": {"test_size": 360, "val_size": 180, "transfer_size": 200}})
    result = run(load_config(Source("run.yaml", dump_yaml(cfg))), session=session)
    assert math.isfinite(result.fit.history[-1]["train_crd"])


# -- RKD: the fast angle term has the values of the implementation it replaced --------------------------------------


def _old_triplet_angles(e):
    """kdlab_losses.relations.triplet_angles before the fast angle term (Gram-matrix form under autograd)."""
    g = e @ e.T
    diag = g.diagonal()
    dot = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + diag.view(-1, 1, 1)
    sq = (diag.view(-1, 1) - 2 * g + diag.view(1, -1)).clamp_min(1e-12)
    norm = sq.sqrt() * (~torch.eye(len(e), dtype=torch.bool))
    inv = torch.where(norm > 0, 1 / norm.clamp_min(1e-12), torch.zeros_like(norm))
    return (dot * inv.unsqueeze(2) * inv.unsqueeze(1)).flatten()


@pytest.mark.parametrize("rows,dim_s,dim_t", [(1, 3, 3), (2, 3, 5), (7, 4, 9), (40, 16, 24)])
def test_rkd_angle_term_equals_the_old_implementation(rows, dim_s, dim_t):
    from kdlab_losses.relations import angle_loss, triplet_angles

    g = torch.Generator().manual_seed(rows)
    s = torch.randn(rows, dim_s, generator=g, dtype=torch.float64, requires_grad=True)
    t = 3 * torch.randn(rows, dim_t, generator=g, dtype=torch.float64)
    assert torch.allclose(triplet_angles(t), _old_triplet_angles(t), atol=1e-12)
    old = torch.nn.functional.smooth_l1_loss(_old_triplet_angles(s), _old_triplet_angles(t))
    (old_grad,) = torch.autograd.grad(old, s)
    new = angle_loss(s, t)
    (new_grad,) = torch.autograd.grad(new, s)
    assert float(new) == pytest.approx(float(old), rel=1e-12, abs=1e-15)
    assert torch.allclose(new_grad, old_grad, rtol=1e-9, atol=1e-15)


def test_rkd_angle_term_in_float32_and_with_repeated_rows():
    from kdlab_losses.relations import angle_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(32, 8, generator=g), torch.randn(32, 12, generator=g)
    old = torch.nn.functional.smooth_l1_loss(_old_triplet_angles(s), _old_triplet_angles(t))
    assert float(angle_loss(s, t)) == pytest.approx(float(old), rel=1e-5)
    # equal rows (dead ReLU units give them): angles of 0, as the paper's code gets by normalising differences
    s[3], t[7] = s[5], t[1]

    def paper(e):
        d = torch.nn.functional.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)
        return torch.bmm(d, d.transpose(1, 2)).flatten()

    s64, t64 = s.double(), t.double()
    want = torch.nn.functional.smooth_l1_loss(paper(s64), paper(t64))
    assert float(angle_loss(s64, t64)) == pytest.approx(float(want), rel=1e-9)
    assert float(angle_loss(s, t)) == pytest.approx(float(want), rel=1e-5)


# -- search spaces ---------------------------------------------------------------------------------------------------


def test_every_loss_declares_a_search_space_its_params_accept():
    from pydantic import TypeAdapter

    from kdlab.study.config import CategoricalDim, Dimension

    dims = TypeAdapter(Dimension)
    for comp in get_registry().all("loss"):
        if comp.plugin != "kdlab-losses":
            continue
        space = comp.extra.get("search_space")
        assert isinstance(space, dict), f"{comp.name} declares no search_space"
        assert set(space) <= set(comp.params.model_fields), f"{comp.name}: {set(space) - set(comp.params.model_fields)}"
        for key, spec in space.items():
            dim = dims.validate_python(spec)
            values = dim.choices if isinstance(dim, CategoricalDim) else [dim.low, dim.high]
            for value in values:
                comp.params.model_validate({key: value})  # raises when the bound is out of the param's range
    assert get_registry().get("loss", "ce").extra["search_space"] == {}


@pytest.mark.parametrize("shape,size", [((2, 3, 8), (4,)), ((2, 3, 9), (4,)), ((2, 3, 8, 6), (2, 3)),
                                        ((2, 3, 9, 6), (4, 4)), ((2, 3, 5), (5,))])
def test_adaptive_pool_equals_torchs(shape, size):
    from kdlab_losses.feature_matching import adaptive_pool

    x = torch.randn(*shape)
    want = (torch.nn.functional.adaptive_avg_pool1d if len(size) == 1 else torch.nn.functional.adaptive_avg_pool2d)(
        x, size)
    assert torch.allclose(adaptive_pool(x, size), want, atol=1e-6)
