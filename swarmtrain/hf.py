"""A Hugging Face Trainer run as a swarm volunteer: `SwarmCallback`.

    swarm = swarmtrain.join(initial_peers=[...], run_id="...")
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[SwarmCallback(swarm, tokens_per_step=2048)])
    with swarm:
        trainer.train()  # every H optimizer steps (the run's window): a swarm round
    swarm.export("out")  # safetensors + save_pretrained

The Trainer keeps stepping its own optimizer (diloco, sparseloco); the callback joins at the
start of training and runs the round after each optimizer step. A peft model (LoRA) exchanges its
adapters only. Requires transformers.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback

from node.errors import SwarmtrainError
from swarmtrain.swarm import Swarm


class SwarmCallback(TrainerCallback):
    """Joins `swarm` with the Trainer's model at on_train_begin; on_step_end counts one inner step
    (the round runs when H steps or the window are done) and stops training at max_rounds."""

    def __init__(
        self, swarm: Swarm, *, tokens_per_step: int = 1, eval_fn: Callable | None = None, eval_name: str = "eval"
    ):
        self.swarm, self.tokens_per_step, self.eval_fn, self.eval_name = swarm, tokens_per_step, eval_fn, eval_name
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.swarm.driver is None:
            driver = self.swarm.attach(model, None, self.tokens_per_step, self.eval_fn, self.eval_name)
            if not driver.strategy.local_optimizer:
                self.swarm.leave(interrupted=True)
                raise SwarmtrainError(
                    f"strategy {driver.strategy.name} sends gradients every step: the Trainer's own optimizer "
                    "step would apply them first",
                    "use diloco or sparseloco with the Trainer, or swarm.optimizer(...) in a loop of your own",
                )
        control.should_training_stop = self.swarm.done
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and isinstance(logs.get("loss"), (int, float)):
            self.last_loss = float(logs["loss"])  # reported with the round (the Trainer's logging steps)

    def on_step_end(self, args, state, control, **kwargs):
        loss, self.last_loss = self.last_loss, None
        if not self.swarm.joined.after_step(loss):
            control.should_training_stop = True
        return control
