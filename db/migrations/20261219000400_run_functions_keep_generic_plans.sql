-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The queries of a plpgsql function are prepared once per session, and PostgreSQL then chooses for
-- each call between the generic plan and a custom plan made for the call's values. For a query on a
-- table partitioned by month it always chose a custom plan: the generic plan's cost counts every
-- month's partition, where a custom plan keeps the one month its values name. So the claim, the
-- checkpoints and the queue planned their lookups of a run anew on every call (and the finish's
-- count of a run's stored bytes, a trigger running inside them): about a fifth of the claim's CPU
-- and a tenth of the checkpoint's went to the planner (perf of the backends under `python -m
-- bench`, docs/performance.md "What PostgreSQL does per run"). A generic plan keeps the same
-- month: it prunes the other partitions when it starts, from the parameters' values.
--
-- These functions, the statements the engine and the API's queue send, run with
-- plan_cache_mode = force_generic_plan, which also holds for whatever they call (triggers
-- included) until they return. tests/db/test_generic_plans.py checks that every function a query
-- of sql/ calls that reads or writes the run history carries it.
alter function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision)
    set plan_cache_mode = force_generic_plan;
alter function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision)
    set plan_cache_mode = force_generic_plan;
alter function tolstoy_checkpoint(text, uuid, uuid, integer, jsonb) set plan_cache_mode = force_generic_plan;
alter function tolstoy_checkpoint_call(text, uuid, uuid, integer, jsonb, jsonb)
    set plan_cache_mode = force_generic_plan;
alter function tolstoy_checkpoint_slots(text, uuid, uuid, integer, jsonb, jsonb)
    set plan_cache_mode = force_generic_plan;
alter function tolstoy_subflow(text, uuid, uuid, integer, jsonb, jsonb) set plan_cache_mode = force_generic_plan;
alter function tolstoy_queue_run_v4(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text, text)
    set plan_cache_mode = force_generic_plan;

-- The other functions the API's and the worker's queries call that read or write the run history: the
-- same, one call each. Not the housekeeping's (tolstoy_prune_signals, tolstoy_expire_unknown_outcomes,
-- tolstoy_maintain_history): they run once a tick, and a custom plan weighs their cutoff (usually
-- nothing is old enough, which an index range shows at once).
alter function tolstoy_cancel_run(uuid, uuid, uuid, uuid) set plan_cache_mode = force_generic_plan;
alter function tolstoy_move_run(uuid, uuid, uuid, integer, text[], boolean, uuid)
    set plan_cache_mode = force_generic_plan;
alter function tolstoy_resolve_step(uuid, uuid, uuid, text, uuid, text, jsonb, bytea, jsonb, boolean)
    set plan_cache_mode = force_generic_plan;
alter function tolstoy_send_signal_v2(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text, text)
    set plan_cache_mode = force_generic_plan;
alter function tolstoy_take_first_signal(uuid, uuid, text, text[]) set plan_cache_mode = force_generic_plan;
alter function tolstoy_usage() set plan_cache_mode = force_generic_plan;
alter function tolstoy_queue_stats() set plan_cache_mode = force_generic_plan;
alter function tolstoy_parked_runs() set plan_cache_mode = force_generic_plan;
alter function tolstoy_unfinished_waits(uuid, uuid, timestamptz, jsonb, text) set plan_cache_mode = force_generic_plan;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

alter function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision)
    reset plan_cache_mode;
alter function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision) reset plan_cache_mode;
alter function tolstoy_checkpoint(text, uuid, uuid, integer, jsonb) reset plan_cache_mode;
alter function tolstoy_checkpoint_call(text, uuid, uuid, integer, jsonb, jsonb) reset plan_cache_mode;
alter function tolstoy_checkpoint_slots(text, uuid, uuid, integer, jsonb, jsonb) reset plan_cache_mode;
alter function tolstoy_subflow(text, uuid, uuid, integer, jsonb, jsonb) reset plan_cache_mode;
alter function tolstoy_queue_run_v4(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text, text)
    reset plan_cache_mode;
alter function tolstoy_cancel_run(uuid, uuid, uuid, uuid) reset plan_cache_mode;
alter function tolstoy_move_run(uuid, uuid, uuid, integer, text[], boolean, uuid) reset plan_cache_mode;
alter function tolstoy_resolve_step(uuid, uuid, uuid, text, uuid, text, jsonb, bytea, jsonb, boolean)
    reset plan_cache_mode;
alter function tolstoy_send_signal_v2(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text, text)
    reset plan_cache_mode;
alter function tolstoy_take_first_signal(uuid, uuid, text, text[]) reset plan_cache_mode;
alter function tolstoy_usage() reset plan_cache_mode;
alter function tolstoy_queue_stats() reset plan_cache_mode;
alter function tolstoy_parked_runs() reset plan_cache_mode;
alter function tolstoy_unfinished_waits(uuid, uuid, timestamptz, jsonb, text) reset plan_cache_mode;
