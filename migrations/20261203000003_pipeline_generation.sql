-- R14: the generation of the pipeline totals, for the summaries' cache
-- (services/opportunity/src/summary.rs).
--
-- Writers only ever add deltas. Whatever takes a delta away or changes a total (the fold, a
-- rebuild, a correction by hand, a truncate) adds one to the generation in its own
-- transaction, enforced here by statement triggers, so nothing can bypass it. Between two
-- snapshots of one server with the same generation the visible deltas can then only have
-- grown (a later snapshot sees every transaction an earlier one saw), so the same generation
-- with the same number of deltas is the same totals and the same deltas: a summary read at
-- that stamp is still exact.
--
-- Only those statements take the generation's row lock; a writer never does. A statement
-- that changed no row (a fold with nothing to move) leaves the generation as it was.

create table pipeline_generation (
    singleton  boolean primary key default true check (singleton),
    generation bigint not null
);
insert into pipeline_generation (generation) values (0);

create function pipeline_generation_bump() returns trigger language plpgsql as $$
begin
    if exists (select from changed) then
        update pipeline_generation set generation = generation + 1;
    end if;
    return null;
end $$;

create function pipeline_generation_bump_truncated() returns trigger language plpgsql as $$
begin
    update pipeline_generation set generation = generation + 1;
    return null;
end $$;

-- A trigger with a transition table has one event: one trigger per event.
create trigger pipeline_deltas_taken after delete on pipeline_deltas
    referencing old table as changed
    for each statement execute function pipeline_generation_bump();
create trigger pipeline_deltas_changed after update on pipeline_deltas
    referencing new table as changed
    for each statement execute function pipeline_generation_bump();
create trigger pipeline_totals_added after insert on pipeline_totals
    referencing new table as changed
    for each statement execute function pipeline_generation_bump();
create trigger pipeline_totals_changed after update on pipeline_totals
    referencing new table as changed
    for each statement execute function pipeline_generation_bump();
create trigger pipeline_totals_taken after delete on pipeline_totals
    referencing old table as changed
    for each statement execute function pipeline_generation_bump();
create trigger pipeline_deltas_truncated after truncate on pipeline_deltas
    for each statement execute function pipeline_generation_bump_truncated();
create trigger pipeline_totals_truncated after truncate on pipeline_totals
    for each statement execute function pipeline_generation_bump_truncated();
