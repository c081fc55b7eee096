"""swarmtrain: train your own PyTorch model with volunteers over the internet.

    import swarmtrain

    with swarmtrain.join(initial_peers=["/ip4/.../tcp/.../p2p/..."], run_id="mine-3f2a9c01b7de") as swarm:
        opt = swarm.optimizer(model, torch.optim.AdamW(model.parameters(), lr=3e-4), tokens_per_step=512)
        while not opt.done:
            loss = my_loss(model, next(batches))
            loss.backward()
            opt.step()  # your optimizer's step; every H steps (or the run's window) a swarm round
            opt.zero_grad()
    swarm.export("out")  # the swarm's state as safetensors (and save_pretrained for transformers models)

A thin facade: the implementation is the node's (node/peer/driver.py drives the CLI volunteer's
rounds from your loop). The whole reference is docs/api.md.
"""

from node.config import RunConfig
from node.errors import SwarmtrainError
from node.outer.strategies import register_codec, register_strategy
from swarmtrain.swarm import Swarm, SwarmOptimizer, join, run_model

__all__ = [
    "RunConfig",
    "Swarm",
    "SwarmOptimizer",
    "SwarmtrainError",
    "join",
    "register_codec",
    "register_strategy",
    "run_model",
]
