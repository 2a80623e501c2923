"""The Lightning callback (swalp/integrations/lightning.py): swalp train's numbers, resume, validation."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from swalp.data import limit, load_data  # noqa: E402
from swalp.integrations import _require  # noqa: E402
from swalp.integrations.lightning import SWALP, EpochSampler  # noqa: E402
from swalp.models import build_model  # noqa: E402
from swalp.training import TrainConfig, resolve, train  # noqa: E402

TINY = dict(data="digits", epochs=4, budget=2, limit_train=200, limit_test=64, batch_size=32, threads=1)


class Lit(pl.LightningModule):
    def __init__(self, model, cfg, log_val=False):
        super().__init__()
        self.model, self.cfg, self.log_val = model, cfg, log_val

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_error", (self(x).argmax(1) != y).float().mean() * 100)

    def configure_optimizers(self):
        c = self.cfg
        sgd = torch.optim.SGD(self.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.wd)
        # A user's own scheduler: the callback replaces it with the SWALP schedule.
        return {"optimizer": sgd, "lr_scheduler": torch.optim.lr_scheduler.StepLR(sgd, 1)}


def _setup(cfg):
    data = load_data(cfg.data, seed=cfg.seed)
    train_set = limit(data.train, cfg.limit_train)
    torch.manual_seed(cfg.seed)  # as swalp train: the initial weights follow from the seed
    model = build_model(cfg.model, data.num_classes, data.input_shape)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size,
                                         sampler=EpochSampler(len(train_set), cfg.seed),
                                         generator=torch.Generator())  # no draw from torch's generator
    return model, loader, limit(data.test, cfg.limit_test)


def _trainer(tmp_path, epochs, **kw):
    kw.setdefault("callbacks", [])
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path), **kw)


def _swalp(cfg, **kw):
    return SWALP(cfg.recipe, budget=cfg.budget, swa_lr=cfg.swa_lr, seed=cfg.seed, lr_ratio=cfg.lr_ratio, **kw)


@pytest.mark.parametrize("stats_every", [None, 3])
def test_callback_trains_exactly_as_swalp_train(tmp_path, one_thread, stats_every):
    cfg = resolve(TrainConfig(**TINY, out=str(tmp_path / "run")))
    train(cfg, progress=False, log=None)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    average = torch.load(tmp_path / "run" / "average.pt", weights_only=False)

    model, loader, _ = _setup(cfg)
    callback = _swalp(cfg, average_at_end=False, stats_every=stats_every)  # measuring changes no number
    trainer = _trainer(tmp_path, cfg.epochs, callbacks=[callback], enable_checkpointing=False)
    trainer.fit(Lit(model, cfg), loader)
    # Bit for bit: the same initial weights, data order, roundings and schedule.
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key
    assert int(callback.average.n_averaged) == cfg.epochs - cfg.budget + 1
    averaged = callback.average.module.model  # the average's copy of the LightningModule's network
    for key, value in averaged.named_parameters():
        assert torch.equal(value, average[key]), key
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "SWALPLR"


def test_resumed_fit_is_bit_identical(tmp_path, one_thread):
    cfg = resolve(TrainConfig(**TINY, out=str(tmp_path / "unused")))
    model, loader, _ = _setup(cfg)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_epochs=1)
    whole = _swalp(cfg)
    _trainer(tmp_path, cfg.epochs, callbacks=[whole, ckpt]).fit(Lit(model, cfg), loader)

    model2, loader2, _ = _setup(cfg)
    resumed = _swalp(cfg)
    after = sorted((tmp_path / "ck").glob("epoch=2-*.ckpt"))[0]  # after epoch 3 of 4: averaging under way
    _trainer(tmp_path, cfg.epochs, callbacks=[resumed]).fit(Lit(model2, cfg), loader2, ckpt_path=after)
    assert int(resumed.average.n_averaged) == int(whole.average.n_averaged) == 3
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)  # both hold the average at the end
    assert not any(q.enabled for q in model2.modules() if type(q).__name__ == "Quantizer")


def test_validation_sees_the_average_only_after_its_first_update(tmp_path, one_thread):
    cfg = resolve(TrainConfig(**TINY, out=str(tmp_path / "unused")))
    model, loader, test_set = _setup(cfg)
    seen = []

    class Spy(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            seen.append((trainer.current_epoch + 1, trainer.callback_metrics.get("swalp/n_averaged"),
                         "val_error" in trainer.callback_metrics))

    val = torch.utils.data.DataLoader(test_set, batch_size=64)
    _trainer(tmp_path, cfg.epochs, callbacks=[_swalp(cfg), Spy()], enable_checkpointing=False).fit(
        Lit(model, cfg), loader, val)
    assert [(e, None if n is None else int(n), v) for e, n, v in seen] == [
        (1, None, True), (2, 1, True), (3, 2, True), (4, 3, True)]


def test_bad_set_ups_are_clear_errors(tmp_path):
    cfg = resolve(TrainConfig(**TINY, out=str(tmp_path / "unused")))
    model, loader, _ = _setup(cfg)
    with pytest.raises(ValueError, match=r"max_epochs=\.\.\.\) above the budget, got max_epochs=2"):
        _trainer(tmp_path, 2, callbacks=[_swalp(cfg)]).fit(Lit(model, cfg), loader)

    class Two(Lit):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    with pytest.raises(ValueError, match="exactly one optimizer; configure_optimizers returned 2"):
        _trainer(tmp_path, 4, callbacks=[_swalp(cfg)]).fit(Two(model, cfg), loader)
    with pytest.raises(ValueError, match="budget"):
        SWALP("paper", budget=0, swa_lr=0.1)


def test_missing_extra_names_it():
    with pytest.raises(ImportError, match=r"pip install 'swalp\[lightning\]'"):
        _require("no_such_module_swalp", "lightning")
    code = "import sys, swalp; assert not any(m.startswith(('lightning', 'accelerate')) for m in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_step_unit_averages_every_n_optimizer_steps(tmp_path, one_thread):
    cfg = resolve(TrainConfig(**TINY, out=str(tmp_path / "unused")))
    model, loader, _ = _setup(cfg)  # 200 examples, batch 32: 7 steps per epoch
    callback = _swalp(cfg, avg_unit="step", avg_every=3)
    _trainer(tmp_path, cfg.epochs, callbacks=[callback], enable_checkpointing=False,
             accumulate_grad_batches=2).fit(Lit(model, cfg), loader)
    # 4 optimizer steps per epoch (7 batches, 2 per step); from step 2 * 4 = 8 to 16, every 3: 8, 11, 14.
    assert callback.steps_per_epoch == 4 and int(callback.average.n_averaged) == 3


def test_stats_are_logged_and_problems_warned_once(tmp_path, one_thread):
    cfg = resolve(TrainConfig(**{**TINY, "epochs": 3}, recipe="fixed8", bits=4, out=str(tmp_path / "run")))
    model, loader, _ = _setup(cfg)
    callback = SWALP("fixed8", bits=4, budget=2, swa_lr=cfg.swa_lr, stats_every=2)
    trainer = _trainer(tmp_path, cfg.epochs, callbacks=[callback], enable_checkpointing=False)
    with pytest.warns(UserWarning, match="swalp: error of layer 'model.0': .* flushed to zero") as caught:
        trainer.fit(Lit(model, cfg), loader)
    messages = [str(w.message) for w in caught if str(w.message).startswith("swalp: ")]
    kinds = [(m.split(" of layer")[0], m.split(" at step")[0].split()[-1]) for m in messages]
    assert len(kinds) == len(set(kinds))  # once per role and kind
    assert [r["step"] for r in callback.stats.records] == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21]  # 7 steps an epoch
    assert trainer.callback_metrics["swalp/flushed_max"] > 0.5
    assert "swalp/sqnr_db_min" in trainer.callback_metrics and callback.stats.optimizer.stats is None  # closed
    with pytest.raises(ValueError, match="stats_every must be an integer >= 1, got 0"):
        SWALP(budget=1, swa_lr=0.1, stats_every=0)
