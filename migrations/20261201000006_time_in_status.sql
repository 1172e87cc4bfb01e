-- R15 time in status, and the one time source of every write.
--
-- salesopp_now(): the moment every statement that stamps a write reads (opportunity creates,
-- updates, status changes and their history and events, status and customer updates; the
-- create_time defaults of customers and statuses stay now(), so create_time = update_time
-- on a new row). It is clock_timestamp() unless a test has set salesopp_test_clock, so tests
-- set and advance time without sleeping. The table is empty in service: the function costs one probe of an empty
-- table. Writing the table is refused unless the session first says
-- `set salesopp.test_clock = 'on'`, which no service ever does: a clock can only be set on
-- purpose, never by a stray statement (and the table is not granted to PUBLIC).
--
-- opportunity_status_durations: per opportunity and status, how many times it entered, the
-- time spent in the stays that ended, and when it last entered and left (R15). A trigger on
-- the history insert keeps it in the change's transaction, so no path that changes a status
-- (create, ChangeOpportunityStatus, UpdateOpportunity, R6 moves of a deleted status) can
-- bypass it: every status change appends one history entry (R9). Readers add the current
-- stay (salesopp_now() - last_entered_time) for the status the opportunity is in.

create table salesopp_test_clock (
    singleton boolean primary key default true check (singleton),
    now       timestamptz not null
);
revoke all on salesopp_test_clock from public;

create function salesopp_test_clock_guard() returns trigger
language plpgsql as $$
begin
    if coalesce(current_setting('salesopp.test_clock', true), '') <> 'on' then
        raise exception using errcode = 'insufficient_privilege',
            message = 'salesopp_test_clock is for tests: set salesopp.test_clock = ''on'' first';
    end if;
    return coalesce(new, old);
end;
$$;
create trigger salesopp_test_clock_guard before insert or update on salesopp_test_clock
    for each row execute function salesopp_test_clock_guard();

create function salesopp_now() returns timestamptz
language sql volatile parallel safe as $$
    select coalesce((select now from salesopp_test_clock), clock_timestamp())
$$;

create table opportunity_status_durations (
    opportunity_id    uuid not null references opportunities (id),
    status_id         uuid not null references opportunity_statuses (id),
    -- How many times the opportunity entered the status (its first status counts once).
    entries           integer not null check (entries >= 1),
    -- The time spent in the stays that ended; the current stay is added by readers.
    cumulative_closed interval not null default interval '0',
    last_entered_time timestamptz not null,
    last_exited_time  timestamptz,
    primary key (opportunity_id, status_id)
);

create function status_durations_follow() returns trigger
language plpgsql as $$
begin
    if new.from_status_id is not null then
        update opportunity_status_durations
        set cumulative_closed = cumulative_closed + new.time_in_previous_status,
            last_exited_time = new.change_time
        where opportunity_id = new.opportunity_id and status_id = new.from_status_id;
    end if;
    insert into opportunity_status_durations
        (opportunity_id, status_id, entries, last_entered_time)
    values (new.opportunity_id, new.to_status_id, 1, new.change_time)
    on conflict (opportunity_id, status_id) do update
        set entries = opportunity_status_durations.entries + 1,
            last_entered_time = excluded.last_entered_time;
    return null;
end;
$$;
create trigger status_durations_follow after insert on status_changes
    for each row execute function status_durations_follow();

-- The durations recomputed from the history: for this migration, and for bulk loads that
-- run with user triggers disabled (the benchmark's seed, the plan checks).
create function status_durations_rebuild() returns void language sql as $$
    lock table opportunity_status_durations in exclusive mode;
    delete from opportunity_status_durations;
    insert into opportunity_status_durations
        (opportunity_id, status_id, entries, cumulative_closed, last_entered_time,
         last_exited_time)
    select entered.opportunity_id, entered.status_id, entered.entries,
           coalesce(exited.cumulative, interval '0'), entered.last_entered_time,
           exited.last_exited_time
    from (select opportunity_id, to_status_id as status_id, count(*)::integer as entries,
                 max(change_time) as last_entered_time
          from status_changes group by opportunity_id, to_status_id) entered
    left join (select opportunity_id, from_status_id as status_id,
                      sum(time_in_previous_status) as cumulative,
                      max(change_time) as last_exited_time
               from status_changes where from_status_id is not null
               group by opportunity_id, from_status_id) exited
        using (opportunity_id, status_id);
$$;

select status_durations_rebuild();

-- R15 velocity: the entries of a period, in time order, each with what the velocity query
-- needs of it without reading the history row.
create index status_change_time_idx on status_changes (change_time)
    include (opportunity_id, sequence, to_status_id);
