"""The engine's vocabulary: sampling parameters, requests, sequences, batches and step outputs.

Only `GenerateRequest` enters the engine and only `EngineOutput` leaves it; `Sequence`, `Segment`
and `Batch` never cross a thread or process boundary.

Positions live on one absolute grid. In block-diffusion mode a sequence's canvas is

    | tokens (final)                               | block (active, B ids)       |
    0                                        block_start          block_start + B
    | prompt ... | generated blocks ...            | prompt tail | committed/MASK |

`tokens` holds every final id before the active block; the prompt's partial last block sits
frozen at the front of `block`. KV for positions < `num_cached` is final and lives in the pages
of `page_table` (page i holds positions [i*P, (i+1)*P), P = page size = block size).
"""

from __future__ import annotations

import enum
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    import torch

DEFAULT_THRESHOLD = 0.95


@dataclass(frozen=True, slots=True)
class GreedyRows:
    """What greedy acceptance needs of R logit rows, instead of the rows [R, V]: the argmax
    token, its logit and the row's log-sum-exp (a tensor-parallel engine gathers these from
    each rank's vocabulary slice rather than the slices themselves)."""

    token: torch.Tensor  # [R] long
    best: torch.Tensor  # [R] fp32: the token's logit
    lse: torch.Tensor  # [R] fp32

    @property
    def confidence(self) -> torch.Tensor:
        return (self.best - self.lse).exp()  # [R]: softmax probability of the argmax


Logits: TypeAlias = "torch.Tensor | GreedyRows"  # fp32 [R, V] rows, or their greedy summary


class GrammarCursor(Protocol):
    """One sequence's position in its grammar (`server.grammar.matcher.GrammarState`): it has
    accepted exactly the sequence's committed output, in order."""

    def accept(self, token: int) -> bool: ...  # False (unchanged) if the grammar forbids it

    def rollback(self, n: int = 1) -> None: ...

    def masked(self, row: torch.Tensor) -> torch.Tensor: ...  # [V] → copy, forbidden = -inf

    @property
    def terminated(self) -> bool: ...


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # cancelled by the client
    ERROR = "error"  # failed inside the engine


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


SAMPLING_EPS = 1e-5  # temperatures below this decode greedily (as vLLM does)
EDITING_OFF = "off"  # editing switched off: its own state, never a threshold (0.0 = maximal)
DEFAULT_MAX_POST_STEPS = 16  # LLaDA2.1's reference and model card (llada2x-decoding.md §1.9)


MAX_LOGPROBS = 20  # top alternatives per token (OpenAI's top_logprobs limit)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """An output token's log-probability and its top alternatives, all from one distribution:
    the model's log-softmax at that position in the step that last wrote it (mask id
    excluded; before temperature, top-k/p and grammar masks). docs/openai-api.md."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass(frozen=True, slots=True)
class Editing:
    """LLaDA2.1 token-to-token editing of one request (llada2x-decoding.md §1.2–1.5)."""

    threshold: float  # a generated token is rewritten when its new candidate's p is above it
    max_post_steps: int  # mask-free iterations a block may edit in before it must settle


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request decoding parameters. Validated on construction (ValueError names the field)."""

    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy; below SAMPLING_EPS it is stored as 0
    top_k: int = 0  # <= 0: off
    top_p: float = 1.0  # 1.0: off
    seed: int | None = None  # per-request generator; None draws from the engine's
    threshold: float | None = None  # commit confidence threshold; None = engine default
    min_commit: int = 1  # low-confidence fallback: commit at least this many per step
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # LLaDA2.1 editing: a threshold in [0, 1], EDITING_OFF, or None = the engine's default
    editing_threshold: float | str | None = None
    max_post_steps: int | None = None  # None = the engine's default (16)
    logprobs: int | None = None  # report each output token's logprob and this many top ones
    prompt_logprobs: int | None = None  # AR only: each prompt token's logprob (+ this many top)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) added before acceptance
    min_tokens: int = 0  # EOS and stop ids cannot be written at output indices below this
    canvas: bool = False  # report the active block after every step (`CanvasFrame`; diffusion)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name} {why}")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad("max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad("temperature", f"must be a finite number >= 0, got {self.temperature!r}")
        if self.temperature < SAMPLING_EPS:  # logits / 5e-324 overflow to inf: greedy instead
            object.__setattr__(self, "temperature", 0.0)
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int):
            raise bad("top_k", f"must be an integer, got {self.top_k!r}")
        if self.threshold is not None and (
            not math.isfinite(self.threshold) or not 0 <= self.threshold <= 1
        ):
            raise bad("threshold", f"must be in [0, 1], got {self.threshold!r}")
        if not isinstance(self.min_commit, int) or self.min_commit < 1:
            raise bad("min_commit", f"must be an integer >= 1, got {self.min_commit!r}")
        if any(not s for s in self.stop):
            raise bad("stop", "must not contain empty strings")
        e = self.editing_threshold
        if e is not None and e != EDITING_OFF and (
                isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e)
                or not 0 <= e <= 1):
            raise bad("editing_threshold", f"must be in [0, 1] or {EDITING_OFF!r}, got {e!r}")
        n = self.logprobs
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)
                              or not 0 <= n <= MAX_LOGPROBS):
            raise bad("logprobs", f"must be an integer in [0, {MAX_LOGPROBS}], got {n!r}")
        n = self.prompt_logprobs
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)
                              or not 0 <= n <= MAX_LOGPROBS):
            raise bad("prompt_logprobs", f"must be an integer in [0, {MAX_LOGPROBS}], got "
                                         f"{n!r}")
        if any(not -100 <= b <= 100 or not math.isfinite(b) for _, b in self.logit_bias):
            raise bad("logit_bias", "values must be in [-100, 100]")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0
               for t, _ in self.logit_bias):
            raise bad("logit_bias", "keys must be token ids >= 0")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or not (
                0 <= self.min_tokens <= self.max_tokens):
            raise bad("min_tokens", f"must be an integer in [0, max_tokens], got "
                                    f"{self.min_tokens!r}")
        m = self.max_post_steps
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise bad("max_post_steps", f"must be an integer >= 0, got {m!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


_rid_counter = itertools.count()


def new_request_id() -> str:
    return f"req-{next(_rid_counter)}"


class GrammarKind(enum.StrEnum):
    JSON_OBJECT = "json_object"  # any JSON object
    JSON_SCHEMA = "json_schema"  # spec: the schema as JSON text
    STRUCTURAL_TAG = "structural_tag"  # spec: an xgrammar structural tag as JSON text


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """A constraint on a request's output; hashable, so compiled grammars are cached by it."""

    kind: GrammarKind
    spec: str = ""


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """What the API hands the engine: already tokenized."""

    rid: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    grammar: GrammarSpec | None = None


@dataclass(slots=True)
class RequestStats:
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache (first admission)
    steps: int = 0  # forwards that produced logits for this request
    blocks: int = 0  # diffusion blocks completed
    preemptions: int = 0
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def tokens_per_forward(self) -> float:
        return self.output_tokens / self.steps if self.steps else 0.0


@dataclass(eq=False, slots=True)
class Sequence:
    """Engine-side state of one request (see the module docstring for the canvas layout)."""

    req: GenerateRequest
    tokens: list[int]  # final ids at positions [0, len(tokens)); set by scheduler
    block: list[int] | None  # active diffusion block (mask id = undecided); None in AR mode
    block_start: int  # absolute position of block[0] (== len(tokens) in diffusion mode)
    status: SeqStatus = SeqStatus.WAITING
    num_cached: int = 0  # positions whose final KV is in pages; set by scheduler
    page_table: list[int] = field(default_factory=list)  # page ids; set by KV manager
    num_sealed_pages: int = 0  # leading pages sealed into the prefix cache; set by KV manager
    last_hash: bytes | None = None  # hash-chain value of the last sealed page
    num_emitted: int = 0  # output ids already reported in an EngineOutput
    block_steps: int = 0  # forwards spent on the current block
    editing: Editing | None = None  # LLaDA2.1 editing rule; None: the 2.0 rule
    post_steps: int = 0  # iterations of the current block that started mask-free (editing)
    block_edits: int = 0  # tokens rewritten in the current block (editing)
    block_settled: bool = False  # editing: the last iteration started mask-free, edited nothing
    canvas_row: int | None = None  # this sequence's row of the device `CanvasTable`
    canvas_row_current: bool = False  # that row equals `block`/`post_steps` (see CanvasTable)
    # with params.logprobs: absolute position -> the logprob of the token last written there
    # (entries leave once their token is emitted)
    logprob_at: dict[int, TokenLogprob] = field(default_factory=dict)
    # with params.prompt_logprobs (AR): one per prompt token, None for the first; sent once
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_logprobs_sent: bool = False
    levenshtein: LevenshteinState | None = None  # LLaDA2.2 editing rows (docs/llada22.md)
    # with params.canvas: each cell's confidence when last written, and this step's changes
    canvas_confidence: list[float | None] | None = None
    canvas_changes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # (committed, edited)
    generator: torch.Generator | None = None  # per-request sampler state (seeded requests)
    grammar: GrammarCursor | None = None  # set when the compiled grammar is ready
    finish_reason: FinishReason | None = None
    error: str | None = None
    stats: RequestStats = field(default_factory=RequestStats)

    @property
    def rid(self) -> str:
        return self.req.rid

    @property
    def prompt_len(self) -> int:
        return len(self.req.prompt_ids)

    @property
    def params(self) -> SamplingParams:
        return self.req.params

    def ids(self, start: int, end: int) -> list[int]:
        """Canvas ids at positions [start, end): final tokens, then the active block."""
        head = self.tokens[start:end]
        if self.block is None or end <= self.block_start:
            return head
        lo = max(start, self.block_start) - self.block_start
        return head + self.block[lo : end - self.block_start]

    def token_at(self, offset: int) -> int:
        """The id at `offset` into the step's logit rows: the active block's position, or (AR)
        the token just appended."""
        return self.block[offset] if self.block is not None else self.tokens[-1]

    def pos_of(self, offset: int) -> int:
        """Absolute position of `token_at(offset)`."""
        return self.block_start + offset if self.block is not None else len(self.tokens) - 1

    @property
    def canvas_end(self) -> int:
        """One past the last position that a forward over this sequence must cover."""
        if self.block is None:
            return len(self.tokens)
        return self.block_start + len(self.block)


@dataclass(slots=True)
class Segment:
    """One sequence's share of a step: positions [start, end) forwarded in one extend.

    Keys visible to a query are the sequence's cached positions plus the segment itself under
    a block-causal mask. `logits_start`..`end` are the rows whose logits the step needs (the
    active block in diffusion mode, the last position in AR mode); None for a prefill chunk
    that stops short of them. The active block's own KV is rewritten every step and is never
    final, so `cache_end` stops before it.
    """

    seq: Sequence
    start: int
    end: int
    logits_start: int | None
    cache_end: int  # positions [start, cache_end) hold final KV once this forward ran

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class Batch:
    """Scheduler → runner: one forward over a ragged list of segments."""

    segments: list[Segment]
    num_tokens: int
    num_preempted: int = 0  # sequences preempted while building this batch

    @property
    def logit_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.logits_start is not None]


@dataclass(slots=True)
class EngineOutput:
    """Engine → API, per request per step: the growth of its contiguous committed output."""

    rid: str
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: FinishReason | None = None
    error: str | None = None
    stats: RequestStats | None = None  # set when finished
    bad_request: bool = False  # the error is the request's fault (the API answers 400)
    logprobs: list[TokenLogprob] | None = None  # one per new token, with params.logprobs
    prompt_logprobs: list[TokenLogprob | None] | None = None  # AR, with the first output
    canvas: CanvasFrame | None = None  # with params.canvas: the active block after this step


@dataclass(slots=True)
class LevenshteinState:
    """One row's LLaDA2.2 block state (docs/llada22.md), reset with every new block."""

    orig: list[bool] | None = None  # per cell: an original mask's flag (set at the first step)
    step: int = 0  # iterations of this block so far
    post: int = 0  # consecutive iterations that started with no original mask
    seen: set[tuple[int, ...]] = field(default_factory=set)  # written states (anti-loop)
    # after an iteration: the cell each cell came from in its scan (None: an inserted or
    # padding mask); None when nothing moved
    sources: list[int | None] | None = None


@dataclass(frozen=True, slots=True)
class CanvasFrame:
    """A request's active block after one step (the playground's view of diffusion decoding).
    Offsets index the block: cell o is absolute position block_start + o."""

    block_start: int
    tokens: tuple[int | None, ...]  # [B]: None = still masked
    committed: tuple[int, ...]  # offsets unmasked this step
    edited: tuple[int, ...]  # offsets rewritten this step (LLaDA2.1 editing)
    # [B]: the model's probability (temperature 1) of each generated cell's token when it was
    # last written; None for masked and prompt cells
    confidence: tuple[float | None, ...]
    step: int  # forwards spent on this block, 1-based
    forwards: int  # forwards spent on the request so far
    block_done: bool  # this step completed the block


@dataclass(slots=True)
class StepStats:
    num_seqs: int = 0  # segments in the forward
    num_tokens: int = 0  # tokens forwarded
    num_logit_rows: int = 0  # segments that produced logits (active blocks / AR positions)
    tokens_committed: int = 0  # output tokens committed this step
    blocks_completed: int = 0
    steps_per_block: list[int] = field(default_factory=list)  # of each block completed
    edits_per_block: list[int] = field(default_factory=list)  # of each editing block completed
    post_steps_per_block: list[int] = field(default_factory=list)  # likewise
    num_preempted: int = 0
    num_running: int = 0
    num_waiting: int = 0
    pages_used: int = 0  # pages referenced by live sequences
    pages_cached: int = 0  # sealed pages with no reference (reusable prefix, evictable)
    pages_total: int = 0
    prefix_hit_tokens: int = 0  # prompt tokens found in the prefix cache at admission
    prefix_query_tokens: int = 0  # prompt tokens looked up at admission
    step_time: float = 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens_committed / self.num_logit_rows if self.num_logit_rows else 0.0

    @property
    def pages_free(self) -> int:
        return self.pages_total - self.pages_used - self.pages_cached


@dataclass(slots=True)
class StepResult:
    """What one `Engine.step()` returns."""

    outputs: list[EngineOutput]
    stats: StepStats
