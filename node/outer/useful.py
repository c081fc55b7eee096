"""Which of a round's updates did useful work: what the chain credits (issue 16, design step 4).

Computed where the round already decodes its updates, with no forward pass, so it works with
`[robust] scoring` off (the default): each entry's direction (`Strategy.direction`, the decoded
update scaled to a full round's work; else its preview's change) on SAMPLE coordinates, then:

1. **Fresh.** Every direction loses its part in the span of the entries of the SPAN_ROUNDS
   rounds before (`span`: what the applier kept of the rounds it applied). A replay or any mix
   of those updates, scaled or not, is left with nothing; an honest update keeps what its new
   work adds.
2. **Aligned.** What is left must point where the rest of the round's fresh work points: its
   cosine with the sum of the other distinct entries' fresh parts (each clipped to CLIP x the
   median norm, as the robust aggregate clips) must reach the strategy's `credit_cosine`
   (COSINE). Zeros have no direction; noise points nowhere (|cos| ~ 1/sqrt(SAMPLE)); the others'
   sum is the round's robust aggregate less the entry, so a crowd of zeros or noise cannot
   drag it, and no entry votes for itself. Each other entry weighs in it by its author's
   standing (protocol 20): its credit units in the rosters of the SPAN_ROUNDS rounds before,
   which every reader that checks credit holds alike (all alike when no other entry has any:
   a run's first rounds). So a crowd without credit does not vote for its own: on DiLoCo's int1
   wire, sign re-quantization leaves each mix of the round before's updates a residual outside
   the span that the crowd's mixes share, and 12 such keys beside 4 honest peers were credited
   7-11 of 12 a round with all alike; 0 by standing (tests/test_sybil_attacks_6.py). A crowd
   that has standing (it trained for one round; or 3 rosters in a row credited nobody) keeps
   itself credited: open (docs/security.md).
3. **First.** Copies (the same bytes, or cosine > scoring.DUPLICATE_COS) are credited to the
   earliest signed announcement, by at least scoring.TIE_SECONDS, else to nobody (`scoring.credited`).

Measured (bench byzantine's simulation, 4-8 honest peers, docs/security.md): DiLoCo's honest
fresh cosines 0.12-0.96 (H = 25, 8 peers), mixes of the 3 rounds before +-0.01, of the 4th
within +-0.1; zeros 0, noise +-0.01. Arithmetic is float64 on the CPU; every peer recomputes the
same values to ~1e-12, and the roster's integer credit is the leader's: a reader accepts it if a
threshold within EPSILON of the rule's gives it (node/round/trust/credit.py wrong).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from node.outer import scoring

SAMPLE = 1 << 16  # coordinates compared, evenly strided over every tensor (scoring.SAMPLE's bound)
SPAN_ROUNDS = 3  # rounds before whose entries' span a fresh part leaves out
COSINE = 0.1  # least cosine of an entry's fresh part with the rest of the round's (DiLoCo, measured)
CLIP = 2.0  # each fresh part weighs in the others' sum at most this multiple of the median norm
EPSILON = 1e-6  # a cosine this close to the threshold may go either way on another machine
TINY = 1e-12  # relative to the round's largest direction: no direction at all


def cosine_of(strategy) -> float:
    """The threshold for `strategy`'s updates: its `credit_cosine`, else COSINE."""
    return float(getattr(strategy, "credit_cosine", COSINE))


def directions(strategy, params: Sequence[torch.Tensor], payloads: list[bytes], weights) -> torch.Tensor:
    """One row per payload: its direction on the sampled coordinates, float64. Raises
    ProtocolError for a payload the codec refuses (the round never lists one)."""
    stride = max(1, sum(p.numel() for p in params) // SAMPLE)
    weights = weights or [1.0] * len(payloads)
    rows = []
    for payload, w in zip(payloads, weights):
        if hasattr(strategy, "direction"):
            parts = strategy.direction(payload, w)
        else:  # a strategy of one's own: its preview's change (its state-dependent terms included)
            parts = [a.float() - b.float() for a, b in zip(strategy.preview(_State(params), payload, w), params)]
        rows.append(torch.cat([t.detach().flatten()[::stride].to(torch.float64) for t in parts]))
    return torch.stack(rows) if rows else torch.zeros(0, 0, dtype=torch.float64)


class _State:
    """What a strategy's preview reads of the state: its parameters."""

    def __init__(self, params):
        self.params = list(params)


def span(previous: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """An orthonormal basis (columns) of the span of `previous` rows (the entries of the rounds
    before), or None when there are none."""
    rows = [r.to(torch.float64) for block in previous for r in block if bool(r.any())]
    if not rows:
        return None
    q, r = torch.linalg.qr(torch.stack(rows).T)
    keep = r.diagonal().abs() > TINY * float(r.diagonal().abs().max())  # dependent rows add nothing
    return q[:, keep]


def fresh_cosines(
    dirs: torch.Tensor, payloads: list[bytes], basis: torch.Tensor | None, standing: Sequence[float] | None = None
) -> list[float]:
    """Per entry, the cosine of its fresh part with the others' (copies of its bytes left out too).
    `standing` (per entry, >= 0: its author's credit units in the rosters of the SPAN_ROUNDS rounds
    before, node/peer/applier.py Crediting): each other entry weighs in the others' sum by its
    author's standing, and an entry whose others have none is measured against them all alike.
    None: all alike (every entry's standing 1)."""
    fresh = dirs if basis is None else dirs - (dirs @ basis) @ basis.T
    first: dict[bytes, int] = {}
    group = [first.setdefault(p, i) for i, p in enumerate(payloads)]  # each distinct payload once
    distinct = sorted(set(group))
    norms = {i: float(fresh[i].norm()) for i in distinct}
    largest = max([float(d.norm()) for d in dirs] + [0.0])
    live = [i for i in distinct if norms[i] > TINY * largest]
    if not live:
        return [0.0] * len(payloads)
    stand = {g: 0.0 for g in distinct}  # a payload's standing: its best-standing author's
    for i, g in enumerate(group):
        stand[g] = max(stand[g], float(standing[i]) if standing is not None else 1.0)
    bound = CLIP * statistics.median(norms[i] for i in live)
    weight = {i: min(1.0, bound / norms[i]) for i in live}
    alike = sum((weight[i] * fresh[i] for i in live), torch.zeros_like(fresh[0]))
    ranked = sum((stand[i] * weight[i] * fresh[i] for i in live), torch.zeros_like(fresh[0]))
    others = sum(stand[i] for i in live)
    out = []
    for i, g in enumerate(group):
        if g not in weight:
            out.append(0.0)
            continue
        if others - stand[g] > 0:  # the others' sum by standing: a crowd without any is not in it
            rest = ranked - stand[g] * weight[g] * fresh[g]
        else:  # nobody else has standing (a run's first rounds): all alike
            rest = alike - weight[g] * fresh[g]
        n = float(rest.norm())
        out.append(float(fresh[i] @ rest) / (norms[g] * n) if n > TINY * largest else 0.0)
    return out


def judged(
    payloads: list[bytes], times: list[float], dirs: torch.Tensor, cosines: list[float], threshold: float
) -> list[bool]:
    """Per entry: useful (its fresh cosine reaches `threshold`) and the credited holder of its bytes."""
    first = scoring.credited(payloads, times, deltas=[d.float() for d in dirs])
    return [ok and c >= threshold for ok, c in zip(first, cosines)]
