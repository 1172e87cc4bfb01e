-- Retention of the change feed (services/outbox/src/retention.rs): events older than the
-- configured retention are deleted from the oldest position up, never leaving a hole, and
-- the position deleted through is kept here, so a cursor before it is answered OUT_OF_RANGE
-- (never a silent skip) and a new stream knows where the oldest kept event is.
create table event_retention (
    singleton            boolean primary key default true check (singleton),
    -- Every event at or below this position is deleted.
    deleted_through      bigint not null default 0 check (deleted_through >= 0),
    -- The occur_time of the newest deleted event: a start_time at or before it is too old.
    deleted_through_time timestamptz
);
insert into event_retention default values;

-- start_time: the first position of the events that occurred at or after a moment.
create index opportunity_events_time_idx on opportunity_events (occur_time) include (seq);
