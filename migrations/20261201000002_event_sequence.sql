-- Events without a global lock: writers no longer serialize on an advisory lock to get ids
-- in commit order. Each event records its transaction (xact_id) and the opportunity's
-- version it makes; one sequencer (services/opportunity/src/sequencer.rs) gives committed
-- events their delivery position `seq` once no older transaction can still commit, in
-- transaction order and per opportunity in version order. Readers follow `seq`.

-- The number of writes an opportunity has had: 1 at creation, +1 per change (one event each).
alter table opportunities add column version bigint not null default 0;
update opportunities o
set version = (select count(*) from opportunity_events e where e.opportunity_id = o.id);

alter table opportunity_events
    add column xact_id xid8 not null default pg_current_xact_id(),
    add column version bigint,
    add column seq bigint;
-- Events written under the old lock were committed in id order: their position is their id.
update opportunity_events e
set version = v.version, seq = e.id
from (select id, row_number() over (partition by opportunity_id order by id) as version
      from opportunity_events) v
where v.id = e.id;
alter table opportunity_events
    alter column version set not null,
    add constraint opportunity_event_version_positive check (version >= 1);

create sequence opportunity_event_seq;
select setval('opportunity_event_seq', coalesce((select max(id) from opportunity_events), 0) + 1, false);

create unique index opportunity_events_seq_idx on opportunity_events (seq);
create unique index opportunity_events_version_idx on opportunity_events (opportunity_id, version);
-- What the sequencer still has to place, oldest transaction first.
create index opportunity_events_unsequenced_idx on opportunity_events (xact_id, id) where seq is null;
