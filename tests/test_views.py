"""teacher.mode: views (kdlab.teachers.views): K seeded augmented views per example, their teacher outputs cached
once on disk (float16, optionally top-k) and replayed exactly; the same outputs as a live teacher on the same
views, in memory and streamed; shared by the runs of a session and across processes through the cache."""

from __future__ import annotations

import pytest
import torch

from kdlab.augment import Augment, view_of
from kdlab.config import DataConfig, LoaderConfig
from kdlab.errors import KdlabError
from kdlab.loading import MemoryFeed, Rows, StreamFeed, Views
from kdlab.modes import Session, run
from kdlab.teachers.views import compact, teacher_views
from kdlab_test_helpers import load_config, tiny_digits_config

CROP_FLIP = DataConfig(name="x", augment=[{"op": "random_crop", "padding": 2}, {"op": "hflip"}]).augment


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 8 * 8, 10)).eval()


def _rows(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("topk", [None, 3])
def test_views_replay_what_a_live_teacher_gives_on_the_same_views(topk):
    teacher, (x, y) = _teacher(), _rows()
    aug = Augment(CROP_FLIP, 10)
    table = teacher_views(teacher, x, aug, key=f"test-{topk}", count=3, topk=topk, seed=5, num_classes=10,
                          device=torch.device("cpu"), batch_size=16)
    assert table.views == 3 and table.seed == 5
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    seen = set()
    for epoch in (1, 2):
        feed = MemoryFeed(x, y, None, {}, 20, augment=aug, seed=11, views=Views(table, seed=11))
        for step in feed.epoch(epoch, perm, perm, cached=False):
            view = view_of(11, step.index, epoch, 3)
            seen.update(view.tolist())
            # the batch shows the cached view of each row ...
            expected, _, _ = aug.train(x[step.index], y[step.index], step.index, seed=5, counter=view)
            assert torch.equal(step.x, expected)
            # ... and the loss gets the outputs the teacher gives that view (stored in float16)
            with torch.no_grad():
                live = teacher(step.x)
            if topk is None:
                assert torch.allclose(step.teacher_logits, live, atol=2e-3, rtol=2e-3)
            else:
                top = live.topk(3, dim=1)
                assert torch.equal(step.teacher_logits.topk(3, dim=1).indices, top.indices)
                assert torch.allclose(step.teacher_logits.gather(1, top.indices), top.values, atol=2e-3, rtol=2e-3)
    assert seen == {0, 1, 2}


def test_streamed_rows_replay_the_same_views_as_rows_in_memory():
    teacher, (x, y) = _teacher(), _rows(30)
    aug = Augment(CROP_FLIP, 10)

    class Dataset:
        def __len__(self):
            return 30

        def __getitem__(self, i):
            return x[i]

    common = dict(count=2, topk=None, seed=5, num_classes=10, device=torch.device("cpu"), batch_size=8)
    memory = teacher_views(teacher, x, aug, key="memory", **common)
    streamed = teacher_views(teacher, Rows([Dataset()]), aug, key="streamed",
                             loader=LoaderConfig(workers=2), **common)
    assert torch.allclose(memory.arrays["logits"].float(), streamed.arrays["logits"].float(), atol=2e-3)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(2))
    a = list(MemoryFeed(x, y, None, {}, 8, augment=aug, seed=3, views=Views(memory, 3)).epoch(1, perm, perm, False))
    feed = StreamFeed(Rows([Dataset()]), y, None, 8, LoaderConfig(workers=2), torch.device("cpu"), augment=aug,
                      seed=3, views=Views(streamed, 3))
    try:
        b = list(feed.epoch(1, perm, perm, False))
    finally:
        feed.close()
    for s, t in zip(a, b):
        assert torch.equal(s.x, t.x) and torch.allclose(s.teacher_logits, t.teacher_logits, atol=2e-3)


def test_damaged_views_are_removed_and_computed_again_with_a_warning(capsys):
    import kdlab

    teacher, (x, _) = _teacher(), _rows()
    aug = Augment(CROP_FLIP, 10)

    def views():
        table = teacher_views(teacher, x, aug, key="damaged", count=2, topk=None, seed=5, num_classes=10,
                              device=torch.device("cpu"), batch_size=16)
        return {k: v.clone() for k, v in table.arrays.items()}

    first = views()
    logits = kdlab.cache_dir("views") / "damaged" / "logits.bin"
    data = bytearray(logits.read_bytes())
    data[len(data) // 2] ^= 0xFF
    logits.write_bytes(bytes(data))
    again = views()
    assert "the cached teacher views" in capsys.readouterr().err
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_views_check_the_teachers_logits_before_caching_them():
    import kdlab
    from kdlab.errors import PluginError

    wrong, (x, _) = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7)), _rows()
    with pytest.raises(PluginError, match=r"expected logits of shape \(16, 10\)"):
        teacher_views(wrong, x, Augment(CROP_FLIP, 10), key="wrong", count=2, topk=None, seed=5, num_classes=10,
                      device=torch.device("cpu"), batch_size=16)
    assert not (kdlab.cache_dir("views") / "wrong").exists()


def test_top_k_keeps_the_largest_logits_and_the_mass_of_the_rest():
    logits = torch.randn(6, 10) * 3
    stored = compact(logits, 4)
    assert set(stored) == {"values", "indices", "fill"}
    from kdlab.loading import ViewTable

    table = ViewTable({k: v.unsqueeze(1) for k, v in stored.items()}, 10, 1, 0)
    replay = table.gather(torch.arange(6), torch.zeros(6, dtype=torch.int64))
    p, q = logits.softmax(1), replay.softmax(1)
    top = logits.topk(4, 1).indices
    assert torch.allclose(q.gather(1, top), p.gather(1, top), atol=1e-5)  # the top-4 probabilities are kept
    rest = torch.ones_like(p, dtype=torch.bool).scatter_(1, top, False)
    assert torch.allclose((q * rest).sum(1), (p * rest).sum(1), atol=1e-5)  # the rest keep their total
    assert compact(logits, 10) == {"logits": logits}


def _views_config(**overrides) -> dict:
    return tiny_digits_config(**{
        "data.augment": [{"op": "random_crop", "padding": 1}], "teacher.mode": "views", "teacher.views": 2,
        "tracking.enabled": False, **overrides})


def test_a_views_run_computes_its_views_once_and_repeats_exactly(write_config, monkeypatch):
    import kdlab.teachers.views as views_module

    made = []
    original = views_module.ArrayWriter

    def counting(*args, **kwargs):
        made.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(views_module, "ArrayWriter", counting)
    loaded = load_config(write_config(_views_config()))
    first = run(loaded, session=Session())
    second = run(loaded, session=Session())  # another session (as another process would): read from disk
    assert len(made) == 1
    assert first.metrics["test_accuracy"] == second.metrics["test_accuracy"]
    assert [h["train_loss"] for h in first.fit.history] == [h["train_loss"] for h in second.fit.history]
    live = run(load_config(write_config(_views_config(**{"teacher.mode": "live"}))), session=Session())
    assert len(made) == 1 and 0 <= live.metrics["test_accuracy"] <= 1


def test_a_study_prepares_the_views_for_its_trials(write_config):
    from kdlab.teachers import get_teacher
    from kdlab.teachers.outputs import prepare_outputs

    loaded = load_config(write_config(_views_config()))
    session = Session()
    data = session.get_data(loaded)
    teacher = get_teacher(loaded, data, torch.device("cpu"), session, track=False)
    outputs = prepare_outputs(loaded, teacher, data, torch.device("cpu"), session)
    assert set(outputs) == {"val", "test"}  # under augmentation the fixed training rows' outputs are not needed
    assert len(session.views) == 1


def test_views_refuse_what_they_cannot_replay(write_config):
    mix = _views_config(**{"data.augment": [{"op": "random_crop", "padding": 1}, {"op": "mixup"}]})
    with pytest.raises(KdlabError, match="views cannot replay mixup"):
        run(load_config(write_config(mix)), session=Session())
    features = _views_config(**{"loss": {"name": "fitnet", "params": {"student_layer": "blocks.0",
                                                                      "teacher_layer": "blocks.0"}}})
    with pytest.raises(KdlabError, match="views stores the teacher's logits only"):
        run(load_config(write_config(features)), session=Session())
