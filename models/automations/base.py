"""The hooks a training automation may implement.

An automation is registered with ``@AUTOMATION_REGISTRY.register("name")`` and configured by
its constructor's keyword arguments, which are its option keys: under
``train.training_automations.<name>`` or, when the class sets ``section``, under
``train.<section>`` as well. ``enabled: false`` switches it off. The loop calls the hooks in the
order the automations are listed and never names one; an automation acts only through the
:class:`~models.context.TrainingContext` it is handed, and logs every change it makes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from models.context import TrainingContext


class Automation:
    """Base class: every hook is a no-op, the state is empty."""

    #: the registry name, set when the automation is built (used in logs and state keys)
    name: str = ""
    #: an option section of its own under ``train:`` (e.g. ``swa``), or None
    section: ClassVar[str | None] = None

    @classmethod
    def check_options(cls, opt: Any, section: dict[str, Any], path: str) -> list[tuple[str, str]]:
        """Problems with this automation's section that need the rest of the file (``--check``
        reports them before anything is built); ``path`` is the section's key path."""
        return []

    def on_train_start(self, ctx: TrainingContext) -> None:
        """Once, after the runner is built and a resumed state is loaded, before the first step."""

    def on_step_end(self, ctx: TrainingContext, logs: dict[str, float] | None) -> None:
        """After every optimiser step; ``logs`` holds the mean logged values (losses, LR, ...)
        at logging steps (``logger.print_freq``) and is None otherwise. Reading device tensors
        here on other steps would stall the GPU; use ``logs``."""

    def on_validation_end(self, ctx: TrainingContext, metrics: dict[str, dict[str, float]]) -> None:
        """After each validation: ``metrics[dataset][metric]`` of the network validated."""

    def on_train_end(self, ctx: TrainingContext) -> None:
        """Once, after the last step (also after an early stop), before the final save."""

    def on_out_of_memory(self, ctx: TrainingContext, error: BaseException) -> bool:
        """A CUDA out-of-memory error in a training step; return True when handled, so the step
        is retried (with whatever the automation changed), False to let the error end the run."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to behave as the uninterrupted one."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
