"""The only place DHT keys are built. Every key starts with "swarmtrain:".

Key                                      subkey      value (see records.py)
swarmtrain:runs                          run id      Manifest of that run
swarmtrain:<run>:peers                   peer id     Heartbeat of that peer
swarmtrain:<run>:metrics                 peer id     MetricsRecord of that peer (metrics.py), signed
swarmtrain:<run>:round:<r>:updates       peer id     Announcement of its update for round r
swarmtrain:<run>:round:<r>:roster        leader id   Roster: the contributions that make round r
swarmtrain:<run>:round:<r>:call          leader id   Call: a v3 round's members and grid (kinds/call.py)

Example: run "demo-3f2a9c01b7de", round 7 ->
    swarmtrain:demo-3f2a9c01b7de:round:7:roster
"""

PREFIX = "swarmtrain"


def runs_key() -> str:
    """All runs known to this DHT; subkey = run id, value = manifest."""
    return f"{PREFIX}:runs"


def peers_key(run_id: str) -> str:
    """Membership of a run; subkey = peer id, value = heartbeat."""
    return f"{PREFIX}:{run_id}:peers"


def metrics_key(run_id: str) -> str:
    """Training metrics of a run, for monitors; subkey = peer id, value = signed MetricsRecord."""
    return f"{PREFIX}:{run_id}:metrics"


def updates_key(run_id: str, round_no: int) -> str:
    """Announcements of round `round_no`; subkey = peer id, value = announcement."""
    return f"{PREFIX}:{run_id}:round:{int(round_no)}:updates"


def roster_key(run_id: str, round_no: int) -> str:
    """Roster of round `round_no`; subkey = the leader that wrote it, value = roster."""
    return f"{PREFIX}:{run_id}:round:{int(round_no)}:roster"


def call_key(run_id: str, round_no: int) -> str:
    """The v3 call of round `round_no` (protocol/kinds/call.py); subkey = its leader, value = call."""
    return f"{PREFIX}:{run_id}:round:{int(round_no)}:call"
