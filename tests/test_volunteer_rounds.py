"""node/peer/volunteer.py's rounds with overlap: a resync near max_rounds, the heartbeat after a
round settles mid-round, and a late peer's window (the demo's late joiner). No network: the
peer's parts are mocks, its state and overlap are real."""

import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace
from unittest.mock import MagicMock

import torch

from node.config import SwarmConfig
from node.outer.overlap import Overlap, Start
from node.outer.state import SwarmState
from node.peer.volunteer import InFlight, Peer, Training
from node.round.ledger import Ledger
from node.train.window import ComputeWindow


def state(round_no: int, value: float = 0.0) -> SwarmState:
    return SwarmState(round=round_no, names=["w"], params=[torch.tensor([value])], outer={})


def peer(state_round: int, max_rounds: int = 5) -> Peer:
    """A Peer with overlap whose network, trainer and reports are mocks."""
    p = Peer.__new__(Peer)
    p.cfg = SimpleNamespace(max_rounds=max_rounds)
    p.run = SimpleNamespace(swarm=SwarmConfig())
    p.strategy = SimpleNamespace(inner_steps=4, local_optimizer=True, make_update=MagicMock(), codec=MagicMock())
    p.overlap = Overlap()
    p.me = "me"
    p.applier = MagicMock()
    p.applier.state = state(state_round)
    p.trainer = MagicMock()
    p.trainer.params = [torch.tensor([0.0])]
    p.sync, p.presence, p.rounds, p.metrics, p.history, p.out, p.pool, p.privacy = (MagicMock() for _ in range(8))
    p.worker = None
    p.sync.outvoted.return_value = False
    p.sync.live.return_value = {}
    p.finish_round = MagicMock()
    p.ledger = Ledger()
    p.inflight = p.training = p.start = None
    p.step_s = p.exchange_s = 0.0
    return p


def in_flight(round_no: int, roster=None, payloads=None) -> InFlight:
    future: Future = Future()
    future.set_result((roster, payloads))
    start = Start(state(round_no - 1), [torch.tensor([0.0])])
    return InFlight(round=round_no, loss=None, steps=3, t0=0.0, t1=0.0, result=future, start=start)


def roster_without_us(round_no: int, signed_at: float):
    anns = (SimpleNamespace(peer="p0", time=signed_at),)
    return SimpleNamespace(announcements=anns, roster=SimpleNamespace(round=round_no, leader="p0", time=signed_at))


def test_a_resync_onto_the_last_rounds_state_opens_no_round_past_max_rounds():
    p = peer(3)  # max_rounds 5: round 4 in flight, the swarm has finished round 5 meanwhile
    p.inflight = in_flight(4, roster_without_us(4, 1.0), payloads=[b""])
    p.applier.apply_round.side_effect = lambda roster, payloads: setattr(p.applier, "state", state(4)) or True
    p.sync.outvoted.return_value = True
    p.sync.resync.side_effect = lambda stop, force=False: setattr(p.applier, "state", state(5))
    assert not p.open_round(threading.Event())  # the demo's late joiner trained a round 6 alone here
    assert p.training is None and p.state.round == 5


def test_a_resync_onto_the_last_rounds_state_mid_round_announces_nothing():
    p = peer(3)
    p.training = Training(round=5, t0=0.0, window=ComputeWindow(SwarmConfig(round_seconds=0.0), 1, windowed=True))
    p.start = Start(state(3), [torch.tensor([0.0])])
    p.inflight = in_flight(4)  # failed for us (no roster): settle resyncs, onto the swarm's last state
    p.sync.resync.side_effect = lambda stop, force=False: setattr(p.applier, "state", state(5))
    assert not p.stepped(None, threading.Event())
    p.rounds.announce.assert_not_called()


def test_a_round_settled_mid_round_is_published_in_the_heartbeat():
    p = peer(3)
    p.training = Training(round=5, t0=0.0, window=ComputeWindow(SwarmConfig(), 4, windowed=True))
    p.start = Start(state(3), [torch.tensor([0.0])])
    roster = SimpleNamespace(announcements=(SimpleNamespace(peer="me", time=0.0),), roster=SimpleNamespace(time=0.0))
    p.inflight = in_flight(4, roster, payloads=[b""])
    p.applier.apply_round.side_effect = lambda roster, payloads: setattr(p.applier, "state", state(4, 1.0)) or True
    p.settle(threading.Event())
    # a joiner asks donors for the state their heartbeat names: it must be the one they serve
    last = p.presence.heartbeat.update.call_args.kwargs
    assert last["state_round"] == 4 and last["digest"] == state(4, 1.0).digest and last["round"] == 5


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_late_peer_ends_its_overlapped_window_with_the_swarm():
    clock = Clock()
    p = peer(2)
    window = ComputeWindow(SwarmConfig(), 4, windowed=True, sized=10.0, clock=clock, wall=lambda: clock.t - 42.0)
    p.training = Training(round=4, t0=0.0, window=window)  # opened at 58 s on the wall clock
    p.start = Start(state(2), [torch.tensor([0.0])])
    # round 3's leader signed its roster (and the others opened round 4) at 52 s: we trail by 6 s
    p.inflight = in_flight(3, roster_without_us(3, 52.0), payloads=[b""])
    p.applier.apply_round.side_effect = lambda roster, payloads: setattr(p.applier, "state", state(3)) or True
    p.settle(threading.Event())
    clock.t += 3.0  # 3 s into our window of 10: with theirs, 9 s in
    assert window.another(3) is True  # a step of 1 s still ends inside it
    clock.t += 1.0
    assert window.another(4) is False  # without the anchor we would run on to 10 s, 6 s after them


def test_a_joiner_sizes_its_first_window_as_the_swarms_and_ends_it_with_their_round():
    clock = Clock()
    p = peer(2)  # joined: synced state 2, whose roster was signed 4 s ago (the swarm's round 3 has run 4 s)
    p.ledger.rosters[2] = roster_without_us(2, time.time() - 4.0)
    p.sync.live.return_value = {f"p{i}": SimpleNamespace(step_s=5.0, exchange_s=1.0) for i in range(3)}
    assert p.open_round(threading.Event())
    window = p.training.window
    window.clock, window.started = clock, clock.t
    assert window.seconds == 20.0  # H=4 x their 5 s a step, not H steps of ours to measure
    clock.t += 10.0
    assert window.another(2) is True  # 10 s in (14 s into theirs): a 5 s step still ends by their 20 s
    clock.t += 5.0
    assert window.another(3) is False  # 15 s in: another would end at 24 s into theirs
