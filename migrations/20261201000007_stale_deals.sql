-- R16 stale deals.
--
-- opportunity_statuses.stale_after_days: an OPEN opportunity with no change (update_time) for
-- that many days (of 24 hours) is stale from update_time + stale_after_days; 0 means never,
-- and a closing status (WON, LOST) is never stale. The moment is computed on every read
-- (salesopp_stale_since), so it is exact to the microsecond, follows a threshold change at
-- once for the opportunities already in the status, and any change (a new update_time)
-- resets it without a write of its own.
--
-- opportunities.stale_notified_for: the update_time of the quiet stretch a STALE event was
-- sent for. The background sweep sends one event per stretch: it picks the stale
-- opportunities whose stale_notified_for differs from their update_time (the partial index
-- below holds just those among the open ones, so the sweep reads the candidates, never the
-- opportunities already told about), sets it in the event's transaction, and any change
-- starts a new stretch.

alter table opportunity_statuses
    add column stale_after_days integer not null default 0,
    add constraint status_stale_after_days_range check (stale_after_days between 0 and 3650),
    add constraint status_closing_never_stale check (kind = 'OPEN' or stale_after_days = 0);

alter table opportunities add column stale_notified_for timestamptz;

-- The wider check is added NOT VALID (no scan under the write-blocking lock) and validated
-- after, under a lock that lets event writes go on.
alter table opportunity_events drop constraint opportunity_events_type_check;
alter table opportunity_events add constraint opportunity_events_type_check
    check (type in ('CREATED', 'UPDATED', 'STATUS_CHANGED', 'STALE')) not valid;
alter table opportunity_events validate constraint opportunity_events_type_check;

-- When an opportunity in `state`, last changed at `update_time`, in a status of
-- `stale_after_days`, became stale; null while it is not (yet). The clock is read only for
-- a status that has a threshold.
create function salesopp_stale_since(state status_kind, update_time timestamptz,
                                     stale_after_days integer)
returns timestamptz language sql volatile parallel safe as $$
    select case
        when state <> 'OPEN' or stale_after_days = 0 then null
        when update_time + stale_after_days * interval '24 hours' <= salesopp_now()
            then update_time + stale_after_days * interval '24 hours'
    end
$$;

create index opportunity_stale_watch_idx on opportunities (status_id, update_time)
    where state = 'OPEN' and stale_notified_for is distinct from update_time;
