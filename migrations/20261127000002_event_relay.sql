-- Where each event relay has got to in the outbox: the id of the last event JetStream
-- acknowledged. A relay resumes after it; what it re-sends after a crash (events published
-- but not yet recorded here) JetStream drops as duplicates by their event id.
create table event_relay_offsets (
    relay_name      text primary key check (length(relay_name) between 1 and 100),
    last_event_id   bigint not null default 0 check (last_event_id >= 0),
    update_time     timestamptz not null default now()
);
