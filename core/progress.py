"""A Rich progress bar that shows the generation next to the epoch and step."""
from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


def _label(trainer, fallback: str) -> str:
    module = trainer.lightning_module
    run = getattr(module, "run", None)
    if run is None:
        return fallback
    return f"generation {module.generation + 1}/{run.generations} · epoch {trainer.current_epoch}"


class GenerationProgressBar(RichProgressBar):
    """Rich bar labelled ``generation g/G · epoch e``."""

    def _get_train_description(self, current_epoch: int) -> str:
        return _label(self.trainer, super()._get_train_description(current_epoch))


class GenerationTQDMProgressBar(TQDMProgressBar):
    """Plain-text fallback with the same label, for terminals without Rich."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(_label(trainer, f"Epoch {trainer.current_epoch}"))
