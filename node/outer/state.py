"""The swarm's training state: what every peer holds identically after each round."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from node.train.model import digest, digests, trainable_named
from protocol.errors import ProtocolError
from protocol.tensors import decode_tensors, encode_tensors


@dataclass
class SwarmState:
    """Parameters and outer-optimizer buffers after `round` rounds; CPU fp32, model order.

    The parameters are the model's trainable tensors only (`trainable(model)`): all of them, or
    just the LoRA adapters, whose frozen base is pinned by the weights SHA-256 in the manifest.
    Kept on the CPU on every peer (also GPU peers) so the outer step is the same sequence of
    IEEE operations everywhere and the result is bit-identical.
    """

    round: int
    names: list[str]
    params: list[torch.Tensor]
    outer: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def initial(cls, model: torch.nn.Module, outer_buffers: list[str]) -> SwarmState:
        named = [(n, p.detach().to("cpu", torch.float32).clone()) for n, p in trainable_named(model)]
        params = [p for _, p in named]
        return cls(
            round=0,
            names=[n for n, _ in named],
            params=params,
            outer={b: [torch.zeros_like(p) for p in params] for b in outer_buffers},
        )

    @property
    def digest(self) -> str:
        """SHA-256 of the parameters: what peers compare."""
        return digest(self.params)

    @property
    def full_digest(self) -> str:
        """SHA-256 of parameters and outer buffers: what a state transfer must reproduce."""
        return self.digests()[1]

    def digests(self) -> tuple[str, str]:
        """(digest, full_digest), the parameters read once."""
        return digests(self.params, [t for b in sorted(self.outer) for t in self.outer[b]])

    def to_bytes(self, run_id: str) -> bytes:
        tensors = {f"param/{n}": p for n, p in zip(self.names, self.params)}
        for b in sorted(self.outer):
            tensors.update({f"outer/{b}/{n}": t for n, t in zip(self.names, self.outer[b])})
        plain, full = self.digests()
        return encode_tensors(tensors, {"run": run_id, "round": self.round, "digest": plain, "full_digest": full})

    @classmethod
    def from_bytes(cls, blob: bytes, *, run_id: str, template: SwarmState) -> SwarmState:
        """Decode and check against the expected layout (`template`); raises ProtocolError."""
        tensors, meta = decode_tensors(blob)
        if meta.get("run") != run_id:
            raise ProtocolError(f"state belongs to run {meta.get('run')!r}, not {run_id}")
        rnd = meta.get("round")
        if not isinstance(rnd, int) or rnd < 0:
            raise ProtocolError("state: bad round")

        def take(prefix: str) -> list[torch.Tensor]:
            out = []
            for n, ref in zip(template.names, template.params):
                t = tensors.pop(f"{prefix}/{n}", None)
                if t is None or t.shape != ref.shape or t.dtype != torch.float32:
                    raise ProtocolError(f"state: {prefix}/{n} missing or of the wrong shape/dtype")
                if not torch.isfinite(t).all():
                    raise ProtocolError(f"state: {prefix}/{n} has NaN or inf")
                out.append(t)
            return out

        state = cls(
            round=rnd,
            names=list(template.names),
            params=take("param"),
            outer={b: take(f"outer/{b}") for b in sorted(template.outer)},
        )
        if tensors:
            raise ProtocolError(f"state: unexpected tensors {sorted(tensors)[:3]}")
        if meta.get("full_digest") != state.full_digest:
            raise ProtocolError("state: content does not match its own digest (corrupt or tampered)")
        return state


def shaped(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """A flat tensor in model order (a v3 round's gathered aggregate) cut into fp32 tensors
    shaped as `params`. Raises ValueError when its size is not theirs."""
    sizes = [p.numel() for p in params]
    if flat.numel() != sum(sizes):
        raise ValueError(f"an aggregate of {flat.numel()} values for {sum(sizes)} parameters")
    return [x.view_as(p) for x, p in zip(flat.to(torch.float32).split(sizes), params)]
