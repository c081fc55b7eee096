"""A donor's rosters by the `ledger` RPC, verified from where they meet our ledger (node/round/trust/chain.py).

What catch-up (catchup.py) reads when it considers a head: the rosters leading there, fetched
answer by answer and verified batch by batch, so junk is never held beyond one answer, with
bounds on answers and rounds a peer's lies can cost. And what a ledger whose window lacks
rosters fetches to fill it (`WindowFill`, in the background): those rosters link to its head
by hash (Ledger.backfill), so no chain rule is judged again.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

import msgpack

from node.round.ledger import WINDOW, AcceptedRoster, Ledger
from node.round.net import RoundNet
from node.round.trust import chain
from node.round.trust.chain import ChainRules, Link
from protocol import signed
from protocol.errors import ProtocolError
from protocol.messages import Request
from protocol.records import GENESIS, MAX_ROSTER

ENVELOPE_BYTES = 512  # a signed envelope's least packed size: an RSA-2048 key (294 B) and signature (256 B)
LEDGER_TIMEOUT = 10.0  # seconds for one `ledger` answer (up to 4 MiB of rosters)
MOST_REQUESTS = 256  # `ledger` answers one catch-up reads from one donor
MOST_ROUNDS = 8192  # rosters one catch-up fetches and verifies (a longer way needs checkpoints: design step 2)
FILL_ANSWERS = 4  # `ledger` answers one window fill reads from one donor (64 rosters: one, under 4 MiB)
FILL_DONORS = 8  # donors asked for one window's missing rosters (then its gap leaves the window in 64 rounds)
log = logging.getLogger("swarmtrain.sync")


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
        return ledger_answer(self.net, self.rules.run_id, donor, first)


def ledger_answer(net: RoundNet, run_id: str, donor: str, first: int, timeout: float = LEDGER_TIMEOUT) -> list[dict]:
    """One `ledger` answer: the donor's rosters from round `first`, in consecutive rounds, unchecked."""
    (answer,) = net.fetch_many([(donor, Request(op="ledger", run=run_id, round=first), None)], timeout=timeout)
    if isinstance(answer, Exception):
        raise answer
    batch = decode_rosters(answer)
    rounds = [_peek(env, "round") for env in batch]
    if rounds != list(range(first, first + len(batch))):
        raise ProtocolError(f"ledger answer: rounds {rounds[:3]}... for a request from round {first}")
    return batch


class WindowFill:
    """Fills the rosters our ledger's window lacks (Ledger.missing: a peer that synced state, a
    restarted peer that lost lines) from live donors, one donor at a time on a thread of its own,
    so nobody waits for it. Until it is full our tickets are not the swarm's and we judge no skip
    mark or turn by rank (Ledger.holds_window): we would take marks the swarm refuses."""

    def __init__(self, net: RoundNet, ledger: Ledger, run_id: str):
        self.net, self.ledger, self.run_id = net, ledger, run_id
        self.fetching: Future | None = None
        self.asked: set[str] = set()  # donors asked since the ledger last moved (moved())

    def step(self, donors: list[str], block: bool = False) -> int:
        """Take a finished fetch's rosters that link (Ledger.backfill); then, if rosters are still
        missing, ask the next of `donors` not asked yet (at most FILL_DONORS; `block`: wait for it
        and take its rosters too). Returns how many rosters it took; never raises."""
        taken = self.take()
        missing = self.ledger.missing()
        todo = [d for d in donors if d not in self.asked and d != self.net.me]
        if self.fetching is None and missing and todo and len(self.asked) < FILL_DONORS:
            self.asked.add(todo[0])
            self.fetching = Future()
            fetch = threading.Thread(target=self.fetch, args=(todo[0], missing), name="window-fill", daemon=True)
            fetch.start()
            if block:
                fetch.join()
                taken += self.take()
        return taken

    def moved(self) -> None:
        """The ledger took another chain's rosters: every donor may hold what it now lacks."""
        self.asked.clear()

    def fetch(self, donor: str, missing: list[int]) -> None:
        """The donor's rosters of the `missing` rounds, unchecked: one answer from the first, which
        holds them all unless they pass SERVE_BYTES; then answers from the highest rounds still
        missing down (Ledger.backfill links from our head down), FILL_ANSWERS in all."""
        out: dict[int, dict] = {}
        first, size = missing[0], 0
        try:
            for _ in range(FILL_ANSWERS):
                batch = ledger_answer(self.net, self.run_id, donor, first)
                out |= {r: env for r, env in enumerate(batch, first) if r in missing}
                size, left = max(size, len(batch)), [r for r in missing if r not in out]
                if not batch or not left:
                    break
                first = max(left[0], left[-1] - size + 1)
        except Exception as e:  # noqa: BLE001 -- whatever a donor sends, it is only not taken
            log.info("window rosters from %s: %s", donor[:16], e)
        self.fetching.set_result((donor, list(out.values())))

    def take(self) -> int:
        """The finished fetch's rosters that link to our head; what does not link is logged, refused."""
        if self.fetching is None or not self.fetching.done():
            return 0
        (donor, envelopes), self.fetching = self.fetching.result(), None
        taken, problems = self.ledger.backfill(envelopes)
        for problem in problems:
            log.warning("window rosters from %s: refused: %s", donor[:16], problem)
        if taken:
            log.info("window: took %d rosters from %s; %d still missing", taken, donor[:16], len(self.ledger.missing()))
        return taken


def decode_rosters(payload: bytes) -> list[dict]:
    """A `ledger` answer: a msgpack list of signed roster envelopes; ProtocolError otherwise. Read
    under bounds (an answer may be max_bytes long, 256 MiB by default): at most one envelope per
    ENVELOPE_BYTES (a key and a signature alone are more), each a map of at most 4 scalars. Unbounded,
    a junk answer of empty maps, one byte each, cost 70x its size in Python objects before any
    check (tests/test_sybil_attacks_8.py: a window fill or catch-up donor could take the node's memory)."""
    try:
        batch = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_array_len=len(payload) // ENVELOPE_BYTES,
            max_map_len=4,
            object_hook=_scalars,
            list_hook=_envelopes,
        )
    except Exception as e:
        raise ProtocolError(f"ledger answer: not msgpack ({type(e).__name__})") from None
    if not isinstance(batch, list) or not all(isinstance(e, dict) for e in batch):
        raise ProtocolError("ledger answer: expected a list of signed rosters")
    return batch


def _scalars(d: dict) -> dict:
    if any(isinstance(v, (list, dict)) for v in d.values()):
        raise ValueError("an envelope holds only bytes and strings")
    return d


def _envelopes(items: list) -> list:
    if not all(isinstance(e, dict) for e in items):
        raise ValueError("a ledger answer is a list of envelopes")
    return items


def _peek(env: dict, name: str):
    """A field of a roster envelope's body, unchecked (chain.verify checks the signature later);
    read under the bounds protocol/signed.py opens a roster's body with."""
    try:
        body = env["body"]
        if len(body) > signed.MAX_BODY["roster"]:
            return None
        return msgpack.unpackb(body, raw=False, max_array_len=MAX_ROSTER + 16, max_map_len=64)[name]
    except Exception:
        return None
