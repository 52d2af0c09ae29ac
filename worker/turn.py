"""The arq job for one turn: wait for the conversation, run the agent, commit exactly once.

What a turn commits to its conversation (atomically, with the final Response and the terminal event):
- completed / incomplete: the input items, then every output item (messages, tool calls and results).
- cancelled: the input items and what was produced before the cancel: the text streamed so far as an
  incomplete message and every tool call that already has its result; a call cut off mid-way is dropped
  with its half-written result, so history never holds an orphan call.
- failed: nothing; the conversation is as if the turn had not been sent.
- store=false: nothing either; its record and stream expire soon after the turn ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

import openai
from openai import AsyncOpenAI
from redis.asyncio import Redis

from shared import events, keys, response_record
from shared.logs import add_log_context
from shared.lua import Durability
from shared.models import PROMPT_TOO_LONG, Item, Status, TurnOutcome, TurnRequest
from shared.queue import JobClaim
from shared.response_object import build_response
from shared.settings import Settings
from shared.stream_tail import read_after
from shared.turn_state import Retention, StaleTurn, Started, TurnState
from worker import context_window
from worker.agent_loop import AgentTurn, Limits
from worker.agents import Agent, AgentRegistry
from worker.append_batcher import AppendBatcher
from worker.approvals import Approvals
from worker.cancel_listener import CancelHandle, CancelListener
from worker.emitter import Emitter
from worker.job_leases import JobLeases
from worker.redis_retry import TRANSIENT, Outage
from worker.resume import Resumed, fold, stopped_output
from worker.turn_telemetry import TurnTelemetry
from worker.upstream_diagnostics import describe_upstream_error
from worker.upstream_retry import Backoff, Exhausted, TurnRetries
from worker.upstreams import UpstreamPool

log = logging.getLogger(__name__)


class Deferred(Exception):
    """The turn waits for its upstream back on the queue: its job is to be run again in `delay_s`."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"deferred {delay_s:.1f}s")
        self.delay_s = delay_s


class TurnRunner:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        agents: AgentRegistry,
        client: AsyncOpenAI,
        cancels: CancelListener,
        outage: Outage,
        claims: dict[str, tuple[str, int]],
    ) -> None:
        self.redis = redis
        self.outage = outage
        self.settings = settings
        self.state = TurnState(redis, Retention.from_settings(settings), Durability.from_settings(settings))
        self.leases = JobLeases(redis, settings.queue_name, settings.lease_s)
        self.writes = AppendBatcher(self.state, settings.append_tick_ms / 1000)
        self.agents = agents
        self.approvals = Approvals(redis, settings.approval_timeout_s)
        self.client = client
        self.upstreams = UpstreamPool(redis, settings, client)
        self.cancels = cancels
        # The worker's claims (job id -> token, score): a job whose commit finished it leaves them, so the
        # worker sends no bookkeeping of its own for it (see worker/arq_worker.py).
        self.claims = claims

    async def run(
        self, response_id: str, conversation_id: str | None, job_id: str | None = None, token: str | None = None
    ) -> str:
        """Runs the turn; `job_id`/`token` name the claim whose lease this keeps alive while it runs, and
        whose job the turn's commit finishes (the worker then has nothing left to do for it)."""
        claim = JobClaim(self.settings.queue_name, job_id, token) if job_id and token else None
        lease = asyncio.create_task(self._renew_lease(claim)) if claim else None
        try:
            return await self._run(response_id, conversation_id, claim)
        finally:
            if lease is not None:
                lease.cancel()

    async def _run(self, response_id: str, conversation_id: str | None, claim: JobClaim | None) -> str:
        # Registered before the start transition, so a cancel published in between is not missed.
        handle = self.cancels.register(response_id)
        try:
            if conversation_id is None:
                conversation_id = await self.outage.call(
                    lambda: response_record.conversation_of(self.redis, response_id), "turn start"
                )
            started = await self._start(response_id, conversation_id)
            if started.status_before not in (Status.QUEUED, Status.IN_PROGRESS):
                return started.status_before
            assert started.request is not None
            req = TurnRequest.model_validate_json(started.request)
            add_log_context(attempt=started.attempt, conversation_id=req.conversation_id)
            if started.cancel_requested:
                # Cancelled (or interrupted) while no worker held it: keep what a dead attempt produced.
                _, resumed = await self._stream_so_far(response_id, started)
                client_tools = frozenset(t["name"] for t in req.tools if t.get("type") == "function")
                output = stopped_output(resumed, client_tools)
                await self._commit(req, started.attempt, TurnOutcome(status=Status.CANCELLED, output=output), claim)
                return Status.CANCELLED.value
            if started.tries > self.settings.job_max_tries:
                await self._commit(req, started.attempt, gave_up(started.tries - 1), claim)
                return Status.FAILED.value
            return await self._execute(req, started, handle, claim)
        finally:
            self.cancels.unregister(response_id)

    async def _start(self, response_id: str, conversation_id: str | None) -> Started:
        """Starts the turn once it heads its conversation's queue (the start script checks that, and drops
        heads that can never hand over); a turn that finished while waiting (cancelled) comes back as such."""
        while True:
            started = await self.outage.call(lambda: self.state.start(response_id, conversation_id), "turn start")
            if not started.waiting:
                return started
            await self.outage.call(lambda: self._woken(response_id), "turn queue")

    async def _woken(self, response_id: str) -> None:
        """Waits for the turn ahead to wake this one as it commits; the timeout covers a wake that was lost."""
        await self.redis.blpop([keys.turn_wake(response_id)], timeout=1)

    async def _stream_so_far(
        self, response_id: str, started: Started
    ) -> tuple[list[events.StreamEvent] | None, Resumed]:
        """What the stream holds as this attempt starts, and what earlier attempts produced: a first run's start
        sent the stream back (with compact retention), a re-run reads it to continue what was streamed."""
        if started.attempt <= 1:
            return started.entries, Resumed()
        stream = await self.outage.call(lambda: read_after(self.redis, response_id, -1), "stream read")
        return stream, fold(stream)

    async def _execute(self, req: TurnRequest, started: Started, handle: CancelHandle, claim: JobClaim | None) -> str:
        attempt = started.attempt
        before, resumed = await self._stream_so_far(req.response_id, started)
        # A pickup after a wait on the queue for the upstream is not a re-run after a worker died.
        rerun = attempt > 1 and not started.continues
        with TurnTelemetry(req, attempt, resumed=bool(resumed), rerun=rerun).attempt_span() as telemetry:
            return await self._execute_attempt(
                req, attempt, handle, claim, resumed, telemetry, announced=started.announced, before=before
            )

    async def _execute_attempt(
        self,
        req: TurnRequest,
        attempt: int,
        handle: CancelHandle,
        claim: JobClaim | None,
        resumed: Resumed,
        telemetry: TurnTelemetry,
        *,
        announced: bool,
        before: list[events.StreamEvent] | None,
    ) -> str:
        # With compact retention, the commit gets the whole stream as this attempt knows it.
        known = before if self.state.retention.compact else None
        emitter = Emitter(
            self.writes,
            req.response_id,
            attempt,
            self.settings.coalesce_ms / 1000,
            handle.request,
            self.outage,
            keep_written=known is not None,
        )
        pending: list[events.Event] = []
        try:
            if not announced:
                # A first run's in_progress was written by its start, as the API encoded it (unless an older
                # API node stored none); a re-run announces itself with one carrying the output it continues.
                progress = TurnOutcome(status=Status.IN_PROGRESS, output=resumed.done_items())
                in_progress = build_response(req, Status.IN_PROGRESS, progress)
                await emitter.emit(events.lifecycle(events.IN_PROGRESS, in_progress))
            agent = self._agent(req.model)
            if agent is None:
                outcome = failed(f"unknown model {req.model!r}: no agent profile has that name")
            else:
                history = await self.outage.call(lambda: self._history(req), "history load")
                if req.compact_only:
                    outcome = await context_window.compacted_context(req, agent, history, self.settings, self.client)
                else:
                    limits = Limits(
                        self.settings.first_token_timeout_s,
                        self.settings.max_output_bytes,
                        self.settings.upstream_retry_inline_max_s,
                    )
                    retries = TurnRetries(
                        self.redis,
                        self.upstreams,
                        self.settings,
                        self.upstreams.routes(agent.model, agent.fallbacks),
                        req.response_id,
                        budget_s=agent.retry_budget_s,
                    )
                    await self.outage.call(lambda: retries.start(resumed=attempt > 1), "retry state")
                    turn = AgentTurn(
                        req,
                        agent,
                        history,
                        self.client,
                        emitter,
                        limits,
                        attempt=attempt,
                        resumed=resumed,
                        continuation=self.settings.upstream_continuation,
                        telemetry=telemetry,
                        retries=retries,
                        approvals=self.approvals,
                    )
                    try:
                        outcome = await self._outcome(turn, handle)
                    except Backoff as backoff:
                        # Written now: the attempt that runs after the wait continues from the stream.
                        await emitter.flush()
                        emitter.discard()
                        await self.outage.call(lambda: self.state.defer(req.response_id, attempt), "turn state")
                        log.info("turn %s waits %.1fs for its upstream on the queue", req.response_id, backoff.delay_s)
                        raise Deferred(backoff.delay_s) from backoff
            telemetry.ended(outcome)
            if outcome.status == Status.CANCELLED:
                emitter.discard()
            else:
                # Written by the commit itself, just before the terminal event: one round trip, not two.
                pending = await emitter.take()
        except StaleTurn as stale:
            log.info("turn %s attempt %d stopped: %s", req.response_id, attempt, stale)
            emitter.discard()
            return "stale"
        await self._commit(req, attempt, outcome, claim, pending, None if known is None else emitter.stream(known))
        return outcome.status.value

    async def _outcome(self, turn: AgentTurn, handle: CancelHandle) -> TurnOutcome:
        task = asyncio.create_task(turn.run())
        handle.task = task
        if handle.requested:
            task.cancel()
        try:
            async with asyncio.timeout(self.settings.turn_timeout_s) as deadline:
                return await task
        except asyncio.CancelledError:
            if not handle.requested:
                raise  # the worker is shutting down: the job goes back on the queue and a re-run continues it
            return TurnOutcome(status=Status.CANCELLED, output=turn.settled_output(), usage=turn.usage)
        except TimeoutError:
            which = (
                f"turn exceeded its deadline of {self.settings.turn_timeout_s:g}s"
                if deadline.expired()
                else f"no output from the model within {self.settings.first_token_timeout_s:g}s"
            )
            return failed(which)
        except Exhausted as exc:
            return TurnOutcome(status=Status.FAILED, error={"code": exc.code, "message": exc.message})
        except Backoff:
            raise
        except openai.APIStatusError as exc:
            if context_window.is_context_overflow(exc):
                message = f"context_length_exceeded: {exc.message} (send truncation: \"auto\" to window the history)"
                return TurnOutcome(status=Status.FAILED, error={"code": PROMPT_TOO_LONG, "message": message})
            return failed(describe_upstream_error(exc))
        except openai.APIError as exc:
            return failed(describe_upstream_error(exc))
        except (StaleTurn, *TRANSIENT):
            raise  # not the turn's failure: a newer attempt owns it, or Redis is away (the job is re-run)
        except Exception as exc:
            log.exception("turn %s failed", turn.req.response_id)
            return failed(f"internal error: {type(exc).__name__}")

    async def _commit(
        self,
        req: TurnRequest,
        attempt: int,
        outcome: TurnOutcome,
        claim: JobClaim | None,
        pending: Sequence[events.Event] = (),
        stream: list[events.StreamEvent] | None = None,
    ) -> None:
        """Commits the turn with its `pending` events; a commit finishes the `claim`'s job in the same step.
        `stream`: every entry the turn's stream holds, when this attempt knows them all (see TurnState.finish)."""
        response = build_response(req, outcome.status, outcome)
        items: list[Item] = []
        # store=false reads the conversation but adds nothing to it.
        if req.conversation_id and req.store and outcome.status != Status.FAILED:
            items = req.input + outcome.output
        unstored_ttl = None if req.store else self.settings.unstored_response_ttl_s
        # Retrying is safe: the script commits only from in_progress at this attempt, so a commit whose
        # reply was lost is refused the second time instead of appending the items (and events) twice; its
        # job was finished by the first, and finishing it again in the worker's bookkeeping changes nothing.
        committed = await self.outage.call(
            lambda: self.state.finish(
                req.response_id,
                expect=Status.IN_PROGRESS,
                attempt=attempt,
                final=outcome.status,
                response=response,
                conversation_id=req.conversation_id,
                items=items,
                response_ttl_s=unstored_ttl,
                stream_ttl_s=unstored_ttl,
                project=req.project,
                key_id=req.key_id,
                pending=pending,
                job=self._current(claim),
                stream=stream,
            ),
            "turn commit",
        )
        if committed and claim is not None:
            # The commit finished the job: the worker's bookkeeping for it would be a round trip for nothing.
            self.claims.pop(claim.job_id, None)

    def _agent(self, model: str) -> Agent | None:
        agent = self.agents.get(model)
        if agent is None and self.settings.allow_model_passthrough:
            return Agent(name=model, model=model)
        return agent

    async def _history(self, req: TurnRequest) -> list[Item]:
        agent = self._agent(req.model)
        return await context_window.history(self.redis, req, agent, self.settings, self.client) if agent else []

    def _current(self, claim: JobClaim | None) -> JobClaim | None:
        """The claim as it stands: this worker may have claimed the job again while the turn ran (its lease
        lapsed: a long outage, or a failover that lost the lease's write), and the turn runs on under the new
        claim's token (see FastPickupWorker._claim_and_start)."""
        if claim is None or claim.job_id not in self.claims:
            return claim
        return replace(claim, token=self.claims[claim.job_id][0])

    async def _renew(self, claim: JobClaim) -> bool:
        current = self._current(claim) or claim
        return await self.leases.renew(current.job_id, current.token)

    async def _renew_lease(self, claim: JobClaim) -> None:
        """Keeps the job's lease short-lived: if this worker dies, another re-runs the turn soon.

        During a Redis outage the renewal keeps retrying; if the lease lapses meanwhile another worker may
        claim the job and start a new attempt, and this one's next write is refused (the attempt number
        fences it off), so renewing stops once the claim is no longer ours.
        """
        while True:
            # The claim has just set a full lease: the first renewal is due a third of one later, not at once.
            await asyncio.sleep(self.settings.lease_s / 3)
            if not await self.outage.call(lambda: self._renew(claim), "lease"):
                log.info("job %s: lease taken over by a newer claim", claim.job_id)
                return


def failed(message: str) -> TurnOutcome:
    return TurnOutcome(status=Status.FAILED, error={"code": "server_error", "message": message})


def gave_up(attempts: int) -> TurnOutcome:
    """A turn whose attempts all died (worker deaths past TURNSTREAM_JOB_MAX_TRIES)."""
    return failed(f"turn gave up after {attempts} attempts")

