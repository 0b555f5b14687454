"""Real clients (issue 25 §3): MirrorDescent trains a tiny model through the Hugging Face
``transformers`` Trainer and through Lightning — passed in as an instance and built by the
client, with gradient accumulation, bf16 autocast on CPU and a scheduler — and a run resumed
from a mid-epoch checkpoint ends with the same weights, bit for bit, as the uninterrupted one.

Models are built from configs (no hub download); one torch thread, since these steps are far
too small to gain from two and the CI cores are shared."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import torch

from attnopt.optim import MirrorDescent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_thread")

P_VALUES = [1.1, 2.0]
IMPLEMENTATIONS = {"fused-cpu", "foreach", "single", "compiled"}
SEQ, VOCAB = 8, 32


# -- Hugging Face transformers ------------------------------------------------------------


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")
    pytest.importorskip("accelerate", reason="accelerate (the Trainer's backend) is in the test extra")
    verbosity, bars = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # the bar of save_pretrained's shards
    yield transformers
    transformers.logging.set_verbosity(verbosity)
    if bars:
        transformers.utils.logging.enable_progress_bar()


class _Counting(torch.utils.data.Dataset):
    """Sequences (s, s+1, …) mod VOCAB: a causal LM learns the successor bigram in a few steps."""

    def __init__(self, n=64):
        start = torch.randint(0, VOCAB, (n, 1), generator=torch.Generator().manual_seed(0))
        self.ids = (start + torch.arange(SEQ)) % VOCAB

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class _FirstToken(_Counting):
    """The same sequences, labelled by whether the first token is in the lower half."""

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": (self.ids[i, 0] < VOCAB // 2).long()}


def _gpt2(hf):
    torch.manual_seed(1)
    config = hf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=SEQ,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return hf.GPT2LMHeadModel(config)


def _bert(hf):
    torch.manual_seed(1)
    config = hf.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=SEQ, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, num_labels=2)
    return hf.BertForSequenceClassification(config)


def _args(hf, out, **overrides):
    kw = dict(output_dir=str(out), max_steps=30, per_device_train_batch_size=8, gradient_accumulation_steps=2,
              use_cpu=True, bf16=True, logging_steps=1, report_to="none", disable_tqdm=True, save_strategy="no",
              seed=0, log_level="error", dataloader_num_workers=0)
    return hf.TrainingArguments(**{**kw, **overrides})


def _trainer(hf, **kw):
    trainer = hf.Trainer(**kw)
    trainer.remove_callback(hf.trainer_callback.PrinterCallback)  # disable_tqdm's print of every log
    return trainer


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _falls(losses, factor=0.75):
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    return last < factor * first, (first, last)


@pytest.mark.parametrize("p", P_VALUES)
def test_hf_trainer_with_an_instance_accumulation_and_bf16(hf, tmp_path, p):
    model = _gpt2(hf)
    opt = MirrorDescent(model.parameters(), lr=0.3, p=p)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 5))
    seen = []  # (autocast on, dtype of the head's output) per forward
    model.lm_head.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    trainer = _trainer(hf, model=model, args=_args(hf, tmp_path), train_dataset=_Counting(), optimizers=(opt, sched))
    trainer.train()

    assert trainer.optimizer.optimizer is opt  # accelerate's AcceleratedOptimizer wraps it
    assert trainer.optimizer.optimizer.implementation in IMPLEMENTATIONS
    assert trainer.lr_scheduler is sched
    assert trainer.state.global_step == 30 and opt.param_groups[0]["step"] == 30
    assert len(seen) == 60  # two micro-batches per optimizer step
    assert set(seen) == {(True, torch.bfloat16)}  # bf16 autocast on CPU
    assert all(w.dtype == torch.float32 for w in model.parameters())  # the master weights stay float32
    ok, (first, last) = _falls(_losses(trainer))
    assert ok, f"loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("p", P_VALUES)
def test_hf_trainer_builds_it_from_optimizer_cls_and_kwargs(hf, tmp_path, p):
    args = _args(hf, tmp_path, learning_rate=0.3, weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=5)
    trainer = _trainer(hf, model=_gpt2(hf), args=args, train_dataset=_Counting(),
                         optimizer_cls_and_kwargs=(MirrorDescent, {"lr": 0.3, "p": p}))
    trainer.train()

    opt = trainer.optimizer.optimizer
    assert isinstance(opt, MirrorDescent) and opt.implementation in IMPLEMENTATIONS
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]  # the Trainer's decay / no-decay groups
    assert all(g["p"] == p for g in opt.param_groups)
    assert opt.param_groups[0]["lr"] == 0.0  # the Trainer's linear schedule ran to its end
    ok, (first, last) = _falls(_losses(trainer))
    assert ok, f"loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("p", P_VALUES)
def test_hf_resume_from_checkpoint_equals_the_uninterrupted_run(hf, tmp_path, p):
    """Checkpoint at step 6 of 12 (4 optimizer steps per epoch, so mid-epoch), with momentum,
    weight decay, a warm-up schedule, accumulation and bf16 autocast; the resumed run ends
    with the uninterrupted run's weights and logs its losses."""
    kwargs = {"lr": 0.3, "p": p, "momentum": 0.5}
    common = dict(max_steps=12, learning_rate=0.3, weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=3)
    full = _trainer(hf, model=_gpt2(hf), args=_args(hf, tmp_path / "full", save_strategy="steps", save_steps=6,
                                                  **common),
                      train_dataset=_Counting(), optimizer_cls_and_kwargs=(MirrorDescent, kwargs))
    full.train()

    model = _gpt2(hf)
    resumed = _trainer(hf, model=model, args=_args(hf, tmp_path / "resumed", **common), train_dataset=_Counting(),
                         optimizer_cls_and_kwargs=(MirrorDescent, kwargs))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))

    assert resumed.state.global_step == 12
    assert resumed.optimizer.optimizer.param_groups[0]["step"] == 12
    want, got = full.model.state_dict(), model.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]
    assert _losses(resumed)[-6:] == _losses(full)[6:]  # its log starts with the checkpoint's 6 entries


@pytest.mark.parametrize("kind", ["gpt2-default", "bert-no-loss-kwargs"])
def test_hf_accumulated_step_equals_the_full_batch_step(hf, tmp_path, kind):
    """2 micro-batches of 8 move the weights as one batch of 16 does: by default for the
    causal LM (its loss is divided by the tokens of the whole accumulated batch); for BERT's
    classification head only with ``trainer.model_accepts_loss_kwargs = False`` (the head
    declares ``**kwargs`` but averages each micro-batch alone, so the Trainer would sum
    the micro-batch means, a gradient twice as large: see docs/integrations.md)."""
    make, data = (_gpt2, _Counting) if kind.startswith("gpt2") else (_bert, _FirstToken)
    moved = []
    for batch, accumulation in ((16, 1), (8, 2)):
        model = make(hf)
        before = [w.detach().clone() for w in model.parameters()]
        args = _args(hf, tmp_path / str(batch), max_steps=1, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=accumulation, bf16=False, max_grad_norm=0.0)
        trainer = _trainer(hf, model=model, args=args, train_dataset=data(16),
                             optimizer_cls_and_kwargs=(MirrorDescent, {"lr": 1.0, "p": 2.0}))
        if kind.startswith("bert"):
            trainer.model_accepts_loss_kwargs = False
        trainer.args.lr_scheduler_type = "constant"
        trainer.train()
        moved.append(torch.cat([(w.detach() - b).flatten() for w, b in zip(model.parameters(), before)]))
    assert moved[0].abs().max() > 0
    torch.testing.assert_close(moved[1], moved[0], rtol=1e-4, atol=1e-6)


# -- Lightning ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lightning():
    module = pytest.importorskip("lightning.pytorch", reason="lightning is in the test extra")
    log = logging.getLogger("lightning.pytorch")  # "GPU available: False …" and the like, at INFO
    old = log.level
    log.setLevel(logging.WARNING)
    yield module
    log.setLevel(old)


N, DIM, CLASSES, BATCH = 64, 8, 4, 8
_gen = torch.Generator().manual_seed(0)
_X = torch.randn(N, DIM, generator=_gen)
_Y = (_X @ torch.randn(DIM, CLASSES, generator=_gen)).argmax(1)


class ResumableLoader:
    """Batches of a fresh permutation each epoch.  ``state_dict`` / ``load_state_dict`` make
    it resumable mid-epoch: Lightning saves them in its checkpoints and, on resume, continues
    with the next batch (a plain DataLoader would restart the epoch, with a warning)."""

    def __init__(self):
        self.epoch, self.pos = 0, 0

    def __len__(self):
        return N // BATCH

    def __iter__(self):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(self.epoch))
        while self.pos < len(self):
            idx = order[self.pos * BATCH:(self.pos + 1) * BATCH]
            self.pos += 1
            yield _X[idx], _Y[idx]
        self.epoch, self.pos = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], state["pos"]


def _module(lightning, p):
    class Classifier(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.net = torch.nn.Sequential(torch.nn.Linear(DIM, 32), torch.nn.Tanh(), torch.nn.Linear(32, CLASSES))
            self.losses = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            opt = MirrorDescent(self.parameters(), lr=0.5, p=p, momentum=0.5, weight_decay=0.01)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.8)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Classifier()


def _lightning_trainer(lightning, root, **kw):
    return lightning.Trainer(accelerator="cpu", devices=1, max_steps=20, accumulate_grad_batches=2,
                             precision="bf16-mixed", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=str(root), **kw)


# Lightning 2.6's own use of a torch.utils._pytree name that torch 2.13 deprecates; and its note that
# the resumed Trainer lacks the ModelCheckpoint that wrote the checkpoint (on purpose: it saves nothing)
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("p", P_VALUES)
def test_lightning_trains_and_resumes_mid_epoch_exactly(lightning, tmp_path, p):
    """20 optimizer steps of 2 accumulated micro-batches (4 steps per epoch) under bf16
    autocast; a checkpoint every 6 steps, so step 6 is in the middle of the second epoch.
    A fresh module and Trainer resumed from it end with the same weights, bit for bit."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    full = _module(lightning, p)
    every6 = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=6, save_top_k=-1)
    trainer = _lightning_trainer(lightning, tmp_path / "full", callbacks=[every6])
    trainer.fit(full, train_dataloaders=ResumableLoader())

    opt = trainer.optimizers[0]
    assert isinstance(opt, MirrorDescent) and opt.implementation in IMPLEMENTATIONS
    assert full.optimizers().optimizer is opt  # the LightningOptimizer wrapper
    assert trainer.global_step == 20 and opt.param_groups[0]["step"] == 20
    assert len(full.losses) == 40
    ok, (first, last) = _falls(full.losses, factor=0.5)
    assert ok, f"loss {first:.3f} -> {last:.3f}"

    resumed = _module(lightning, p)
    again = _lightning_trainer(lightning, tmp_path / "resumed", enable_checkpointing=False)
    again.fit(resumed, train_dataloaders=ResumableLoader(), ckpt_path=tmp_path / "ckpt" / "step=6.ckpt")

    assert again.optimizers[0].param_groups[0]["step"] == 20
    assert resumed.losses == full.losses[12:]
    for (name, want), got in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(want, got), name


# -- the docs page ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
@pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers")
def test_docs_integrations_snippets_run(hf, lightning, tmp_path, monkeypatch):
    """docs/integrations.md's Python blocks run as written, in order, in one namespace (their
    own asserts check the wrappers and the resumed weights)."""
    page = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 3, "docs/integrations.md lost an example"
    monkeypatch.chdir(tmp_path)  # the examples write hf-out/ and lightning-out/ where they run
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - our own docs
    assert isinstance(namespace["opt"], MirrorDescent)
    assert namespace["again"].state.global_step == 12
