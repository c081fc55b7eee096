"""A donor's rosters by the `ledger` RPC, verified from where they meet our ledger (node/round/trust/chain.py).

What catch-up (catchup.py) reads when it considers a head: the rosters leading there, fetched
answer by answer and verified batch by batch, so junk is never held beyond one answer, with
bounds on answers and rounds a peer's lies can cost.
"""

from __future__ import annotations

import msgpack

from node.round.ledger import WINDOW, AcceptedRoster, Ledger
from node.round.net import RoundNet
from node.round.trust import chain
from node.round.trust.chain import ChainRules, Link
from protocol.errors import ProtocolError
from protocol.messages import Request
from protocol.records import GENESIS

LEDGER_TIMEOUT = 10.0  # seconds for one `ledger` answer (up to 4 MiB of rosters)
MOST_REQUESTS = 256  # `ledger` answers one catch-up reads from one donor
MOST_ROUNDS = 8192  # rosters one catch-up fetches and verifies (a longer way needs checkpoints: design step 2)


class RosterReader:
    """Reads and verifies donors' rosters for one peer (its ledger; RoundNet for the RPC)."""

    def __init__(self, net: RoundNet, ledger: Ledger, rules: ChainRules, start: Link):
        self.net, self.ledger, self.rules, self.start = net, ledger, rules, start

    def walk(self, donor: str, first: int, last: int) -> list[AcceptedRoster] | None:
        """The donor's rosters of rounds first..last, verified batch by batch from where they
        meet our ledger (None: they meet none of ours). Raises ProtocolError at the first roster
        that does not verify, so junk is never held beyond one answer."""
        if last - first >= MOST_ROUNDS:
            raise ProtocolError(f"a head {last - first + 1} rounds past ours: more than a catch-up verifies")
        ours = sorted(self.ledger.rosters)
        meet_after = ours[-1] + 1 if ours else 1  # a branch leaves ours at the latest right after our head
        pending: list[dict] = []
        verified: list[AcceptedRoster] = []
        link, window, nxt = None, self.ledger.window({}), first
        for _ in range(MOST_REQUESTS):
            batch = self.batch(donor, nxt)[: last - nxt + 1] if nxt <= last else []
            nxt += len(batch)
            pending += batch
            if link is None and (nxt <= min(meet_after, last) and batch):
                continue  # the branch may still meet ours further on: read up to our head first
            if link is None:
                met = self.meet(pending, first)
                if met is None:
                    return None
                at, link = met
                window = self.ledger.window({r: a for r, a in self.ledger.rosters.items() if r < link.round})
                pending = pending[at:]
            checked = chain.verify(pending, link, window, self.rules)
            if checked.problem:
                raise ProtocolError(f"does not verify: {checked.problem}")
            for accepted in checked.rosters:
                verified.append(accepted)
                window.rosters[accepted.roster.round] = accepted
                window.keep_seed(accepted)
                window.rosters.pop(accepted.roster.round - WINDOW, None)
                link = chain.after(accepted)
            pending = []
            if not batch:
                return verified
        raise ProtocolError(f"more than {MOST_REQUESTS} answers for one catch-up")

    def after(self, ancestor: int, branch: tuple[AcceptedRoster, ...], donor: str, last: int) -> list[AcceptedRoster]:
        """The donor's rosters after `branch` (verified rosters that follow our ledger's round
        `ancestor`) up to round `last`, verified from the branch's end as if we held it."""
        held = self.ledger.window({r: a for r, a in self.ledger.rosters.items() if r <= ancestor})
        for accepted in branch:
            held.rosters[accepted.roster.round] = accepted
            held.keep_seed(accepted)
        end = branch[-1].roster.round if branch else ancestor
        return RosterReader(self.net, held, self.rules, self.start).walk(donor, end + 1, last) or []

    def meet(self, envs: list[dict], first: int) -> tuple[int, Link] | None:
        """(index into envs, its link) of the last roster that continues one of ours (or the genesis)."""
        for i in range(len(envs) - 1, -1, -1):
            r = first + i
            prev = _peek(envs[i], "prev")
            mine = self.ledger.rosters.get(r - 1)
            if mine is not None and mine.hash == prev:
                return i, chain.after(mine)
            if r == 1 and prev == GENESIS:
                return i, self.start
        return None

    def batch(self, donor: str, first: int) -> list[dict]:
        """One `ledger` answer: the donor's rosters from round `first`, in consecutive rounds."""
        request = Request(op="ledger", run=self.rules.run_id, round=first)
        (answer,) = self.net.fetch_many([(donor, request, None)], timeout=LEDGER_TIMEOUT)
        if isinstance(answer, Exception):
            raise answer
        batch = decode_rosters(answer)
        rounds = [_peek(env, "round") for env in batch]
        if rounds != list(range(first, first + len(batch))):
            raise ProtocolError(f"ledger answer: rounds {rounds[:3]}... for a request from round {first}")
        return batch


def decode_rosters(payload: bytes) -> list[dict]:
    """A `ledger` answer: a msgpack list of signed roster envelopes; ProtocolError otherwise."""
    try:
        batch = msgpack.unpackb(payload, raw=False)
    except Exception as e:
        raise ProtocolError(f"ledger answer: not msgpack ({type(e).__name__})") from None
    if not isinstance(batch, list) or not all(isinstance(e, dict) for e in batch):
        raise ProtocolError("ledger answer: expected a list of signed rosters")
    return batch


def _peek(env: dict, name: str):
    """A field of a roster envelope's body, unchecked (chain.verify checks the signature later)."""
    try:
        return msgpack.unpackb(env["body"], raw=False)[name]
    except Exception:
        return None
