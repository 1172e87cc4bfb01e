-- salesopp: the one shared schema of the customer, opportunity and status-config services.
--
-- Every rule of DESIGN.md that the database can hold is written here as a constraint, so no
-- code path (a bug, a manual fix in psql) can break it: R3 and R4 on opportunity_statuses,
-- R1 and R8 on opportunities, R9 and R10 on status_changes (append-only, gap-free chain).

create extension if not exists pg_trgm;

create type status_kind as enum ('OPEN', 'WON', 'LOST');

-- Raised by the triggers below; the services map SQLSTATE 'SO001' to FAILED_PRECONDITION.
create function salesopp_violation(message text) returns void
language plpgsql as $$
begin
    raise exception using errcode = 'SO001', message = message;
end;
$$;

------------------------------------------------------------------------------------------
-- Salespeople: everyone who has called the suite with a token (R12), recorded on first use
-- and kept up to date from their latest token, so managers can find them by name.
------------------------------------------------------------------------------------------
create table salespeople (
    id              text primary key check (length(id) between 1 and 200),  -- token `sub`
    display_name    text not null,                                           -- token `name`
    team            text not null default '',                                -- token `team`
    roles           text[] not null default '{}',
    first_seen_time timestamptz not null default now(),
    last_seen_time  timestamptz not null default now()
);
create index salespeople_team_idx on salespeople (team, lower(display_name), id);
create index salespeople_name_idx on salespeople (lower(display_name), id);
create index salespeople_name_trgm_idx on salespeople using gin (lower(display_name) gin_trgm_ops);

------------------------------------------------------------------------------------------
-- Statuses (R2-R7). Never deleted: DeleteStatus archives (R6), so history still resolves.
------------------------------------------------------------------------------------------
create table opportunity_statuses (
    id              uuid primary key default gen_random_uuid(),
    display_name    text not null check (length(display_name) between 1 and 100
                                         and display_name = btrim(display_name)),
    -- Names by language tag; at least Thai and English (R2).
    localized_names jsonb not null check (jsonb_typeof(localized_names) = 'object'
                                          and localized_names ? 'th' and localized_names ? 'en'),
    probability     smallint not null,
    kind            status_kind not null,
    -- 1-based pipeline order over all statuses, archived ones after the live ones.
    position        integer not null check (position >= 1),
    is_default      boolean not null default false,
    archived        boolean not null default false,
    revision        bigint not null default 1,          -- the etag
    create_time     timestamptz not null default now(),
    update_time     timestamptz not null default now(),
    archive_time    timestamptz,
    -- R3: WON is 100, LOST is 0, OPEN strictly between.
    constraint status_probability_fits_kind check (
        (kind = 'WON' and probability = 100)
        or (kind = 'LOST' and probability = 0)
        or (kind = 'OPEN' and probability > 0 and probability < 100)),
    -- R3: the closing statuses are never archived. R4: the default is a live OPEN status.
    constraint status_closing_never_archived check (kind = 'OPEN' or not archived),
    constraint status_default_is_open_and_live check (not is_default or (kind = 'OPEN' and not archived)),
    constraint status_archive_time_iff_archived check ((archive_time is not null) = archived),
    constraint status_position_unique unique (position) deferrable initially deferred,
    -- Target of opportunities' (status_id, state) foreign key: an opportunity's state is
    -- always its status's kind.
    constraint status_id_kind_unique unique (id, kind)
);
-- R4: at most one default, enforced by the database (and at least one: trigger below).
create unique index status_one_default_idx on opportunity_statuses ((true)) where is_default;
-- R3: at most one WON and one LOST status (and at least one: they can't be deleted or re-kinded).
create unique index status_one_per_closing_kind_idx on opportunity_statuses (kind) where kind <> 'OPEN';
-- Live names are unique, ignoring case.
create unique index status_live_name_unique_idx on opportunity_statuses (lower(display_name)) where not archived;

-- R3: a status's kind never changes, and statuses are never erased (R6 archives them).
create function status_guard() returns trigger
language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        perform salesopp_violation('statuses are archived, never deleted');
    elsif new.kind <> old.kind then
        perform salesopp_violation('a status''s kind never changes');
    end if;
    return coalesce(new, old);
end;
$$;
create trigger status_guard before update or delete on opportunity_statuses
    for each row execute function status_guard();

-- R4: exactly one default at the end of every transaction that touches statuses.
create function status_exactly_one_default() returns trigger
language plpgsql as $$
begin
    if (select count(*) from opportunity_statuses where is_default) <> 1 then
        perform salesopp_violation('exactly one status must be the default');
    end if;
    return null;
end;
$$;
create constraint trigger status_exactly_one_default
    after insert or update on opportunity_statuses
    deferrable initially deferred
    for each row execute function status_exactly_one_default();

-- R2: the shipped statuses, in pipeline order. Fixed ids so documentation can name them.
insert into opportunity_statuses (id, display_name, localized_names, probability, kind, position, is_default) values
    ('00000000-0000-4000-8000-000000000001', 'Interested',
        '{"en": "Interested", "th": "สนใจ"}', 10, 'OPEN', 1, true),
    ('00000000-0000-4000-8000-000000000002', 'Presented',
        '{"en": "Presented", "th": "นำเสนอ"}', 20, 'OPEN', 2, false),
    ('00000000-0000-4000-8000-000000000003', 'Sent email',
        '{"en": "Sent email", "th": "ส่ง Email"}', 30, 'OPEN', 3, false),
    ('00000000-0000-4000-8000-000000000004', 'Quotation',
        '{"en": "Quotation", "th": "เสนอราคา"}', 50, 'OPEN', 4, false),
    ('00000000-0000-4000-8000-000000000005', 'Considering and comparing',
        '{"en": "Considering and comparing", "th": "พิจารณา และเปรียบเทียบ"}', 70, 'OPEN', 5, false),
    ('00000000-0000-4000-8000-000000000006', 'Closed won',
        '{"en": "Closed won", "th": "ปิดการขายสำเร็จ"}', 100, 'WON', 6, false),
    ('00000000-0000-4000-8000-000000000007', 'Closed lost',
        '{"en": "Closed lost", "th": "ปิดการขายไม่สำเร็จ"}', 0, 'LOST', 7, false);

------------------------------------------------------------------------------------------
-- Customers: the shared directory (R1, R12).
------------------------------------------------------------------------------------------
create table customers (
    id              uuid primary key default gen_random_uuid(),
    code            text check (code is null or length(code) between 1 and 50),
    display_name    text not null check (length(display_name) between 1 and 200
                                         and display_name = btrim(display_name)),
    email           text,
    phone           text,                    -- E.164
    contact_name    text,
    tax_id          text check (tax_id is null or tax_id ~ '^[0-9]{13}$'),
    address         text,
    owner_id        text not null references salespeople (id),
    archived        boolean not null default false,
    archive_time    timestamptz,
    created_by      text not null references salespeople (id),
    updated_by      text not null references salespeople (id),
    revision        bigint not null default 1,
    create_time     timestamptz not null default now(),
    update_time     timestamptz not null default now(),
    constraint customer_archive_time_iff_archived check ((archive_time is not null) = archived)
);
create unique index customer_code_unique_idx on customers (lower(code)) where code is not null;
create index customer_name_idx on customers (lower(display_name), id);
create index customer_update_time_idx on customers (update_time desc, id desc);
create index customer_owner_idx on customers (owner_id, lower(display_name), id);
-- R13: substring search in any script; Thai code points are trigram word characters.
-- The fields are joined by a line feed, which a search text never contains, so a match never
-- spans two fields. services/customer/src/store.rs repeats this expression exactly.
create index customer_search_trgm_idx on customers using gin (
    (lower(display_name || E'\n' || coalesce(code, '') || E'\n' || coalesce(contact_name, '')
           || E'\n' || coalesce(email, '') || E'\n' || coalesce(phone, ''))) gin_trgm_ops);

------------------------------------------------------------------------------------------
-- Opportunities (R1, R5, R8).
------------------------------------------------------------------------------------------
create table opportunities (
    id                  uuid primary key default gen_random_uuid(),
    customer_id         uuid not null references customers (id),
    owner_id            text not null references salespeople (id),
    title               text not null check (length(title) between 1 and 200 and title = btrim(title)),
    currency_code       text not null check (currency_code ~ '^[A-Z]{3}$'),
    -- Exact to the nano, never negative.
    amount              numeric(28, 9) not null check (amount >= 0),
    expected_close_date date,
    status_id           uuid not null,
    -- Always the kind of status_id (the composite foreign key below).
    state               status_kind not null,
    lost_reason         text,
    next_step           text,
    close_time          timestamptz,
    status_change_time  timestamptz not null,
    created_by          text not null references salespeople (id),
    updated_by          text not null references salespeople (id),
    revision            bigint not null default 1,
    create_time         timestamptz not null default now(),
    update_time         timestamptz not null default now(),
    constraint opportunity_status_fk foreign key (status_id, state)
        references opportunity_statuses (id, kind),
    -- R8: closed (WON or LOST) exactly when it has a close time; a lost reason only when LOST.
    constraint opportunity_close_time_iff_closed check ((close_time is not null) = (state <> 'OPEN')),
    constraint opportunity_lost_reason_only_lost check (lost_reason is null or state = 'LOST')
);
-- R1: a new opportunity belongs to a customer that is not archived. The share lock makes a
-- concurrent DeleteCustomer (which locks the customer FOR UPDATE before counting its open
-- opportunities) wait for this insert, or this insert wait for it.
create function opportunity_customer_is_live() returns trigger
language plpgsql as $$
begin
    if (select archived from customers where id = new.customer_id for share) then
        perform salesopp_violation('an archived customer takes no new opportunities');
    end if;
    return new;
end;
$$;
create trigger opportunity_customer_is_live before insert on opportunities
    for each row execute function opportunity_customer_is_live();
-- customer_id is immutable.
create function opportunity_customer_immutable() returns trigger
language plpgsql as $$
begin
    if new.customer_id <> old.customer_id then
        perform salesopp_violation('an opportunity''s customer never changes');
    end if;
    return new;
end;
$$;
create trigger opportunity_customer_immutable before update of customer_id on opportunities
    for each row execute function opportunity_customer_immutable();

-- R6: no opportunity enters an archived status. The row lock (FOR SHARE) also makes a
-- concurrent DeleteStatus (which locks the status FOR NO KEY UPDATE before counting and
-- moving its opportunities) wait for this write, or this write wait for it.
create function opportunity_status_is_live() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' or new.status_id is distinct from old.status_id then
        if (select archived from opportunity_statuses where id = new.status_id for share) then
            perform salesopp_violation('an archived status takes no opportunities');
        end if;
    end if;
    return new;
end;
$$;
create trigger opportunity_status_is_live before insert or update of status_id on opportunities
    for each row execute function opportunity_status_is_live();

create index opportunity_owner_update_idx on opportunities (owner_id, update_time desc, id desc);
create index opportunity_update_idx on opportunities (update_time desc, id desc);
create index opportunity_customer_idx on opportunities (customer_id, update_time desc, id desc);
create index opportunity_status_idx on opportunities (status_id, id);
-- Unknown close dates sort last: 'infinity' stands for them in the order and the keyset.
create index opportunity_close_date_idx on opportunities ((coalesce(expected_close_date, 'infinity'::date)), id);
create index opportunity_owner_close_date_idx on opportunities (owner_id, (coalesce(expected_close_date, 'infinity'::date)), id);
create index opportunity_amount_idx on opportunities (amount desc, id desc);
create index opportunity_owner_amount_idx on opportunities (owner_id, amount desc, id desc);
-- R14: a team's pipeline is an index-only aggregate over its owners' rows.
create index opportunity_pipeline_idx on opportunities (owner_id, status_id, currency_code) include (amount, expected_close_date, state);
-- R13: free text over title and next step (line-feed separated, like the customer search).
create index opportunity_text_trgm_idx on opportunities using gin ((lower(title || E'\n' || coalesce(next_step, ''))) gin_trgm_ops);

------------------------------------------------------------------------------------------
-- Status history (R7, R9, R10): append-only, each entry a snapshot of its time.
------------------------------------------------------------------------------------------
create table status_changes (
    id                      uuid primary key default gen_random_uuid(),
    opportunity_id          uuid not null references opportunities (id),
    -- 1, 2, 3... per opportunity with no gap; 1 is the initial status given at creation.
    sequence                integer not null check (sequence >= 1),
    from_status_id          uuid references opportunity_statuses (id),
    from_display_name       text,
    from_kind               status_kind,
    from_probability        smallint,
    to_status_id            uuid not null references opportunity_statuses (id),
    to_display_name         text not null,
    to_kind                 status_kind not null,
    to_probability          smallint not null,
    changed_by_id           text not null references salespeople (id),
    changed_by_name         text not null,
    change_time             timestamptz not null,
    note                    text not null default '',
    currency_code           text not null,
    amount                  numeric(28, 9) not null,
    time_in_previous_status interval,
    lost_reason             text,
    request_id              text,
    constraint status_change_sequence_unique unique (opportunity_id, sequence),
    -- The first entry has no previous status; every later one has all of it.
    constraint status_change_from_complete check (
        (sequence = 1 and from_status_id is null and from_display_name is null and from_kind is null
             and from_probability is null and time_in_previous_status is null)
        or (sequence > 1 and from_status_id is not null and from_display_name is not null
             and from_kind is not null and from_probability is not null
             and time_in_previous_status is not null)),
    constraint status_change_moves check (from_status_id is null or from_status_id <> to_status_id)
);

-- R9: history is never edited or deleted.
create function status_change_append_only() returns trigger
language plpgsql as $$
begin
    perform salesopp_violation('status history is append-only');
    return null;
end;
$$;
create trigger status_change_append_only before update or delete on status_changes
    for each row execute function status_change_append_only();
create trigger status_change_no_truncate before truncate on status_changes
    for each statement execute function status_change_append_only();

-- R10: the chain has no gap: an entry starts where the one before it ended.
create function status_change_chain() returns trigger
language plpgsql as $$
begin
    if new.sequence > 1 and not exists (
        select 1 from status_changes
        where opportunity_id = new.opportunity_id
          and sequence = new.sequence - 1
          and to_status_id = new.from_status_id) then
        perform salesopp_violation('a status change must start from the previous change''s status');
    end if;
    return new;
end;
$$;
create trigger status_change_chain before insert on status_changes
    for each row execute function status_change_chain();

------------------------------------------------------------------------------------------
-- Event outbox: one row per opportunity change, written in the change's transaction.
-- Writers take one transaction-scoped advisory lock before their first event and keep it to
-- commit, so event ids are allocated in commit order: a reader that follows ids never skips
-- an event that commits after a higher id was read (services/opportunity/src/events.rs).
------------------------------------------------------------------------------------------
create table opportunity_events (
    id              bigint generated always as identity primary key,
    event_id        uuid not null unique default gen_random_uuid(),
    type            text not null check (type in ('CREATED', 'UPDATED', 'STATUS_CHANGED')),
    opportunity_id  uuid not null references opportunities (id),
    occur_time      timestamptz not null,
    actor_id        text not null,
    actor_name      text not null,
    request_id      text,
    -- The owner after the change, and before it when it changed: who may see the event (R12).
    owner_id        text not null,
    previous_owner_id text,
    -- The encoded salesopp.opportunity.v1.OpportunityEvent (before, after, status change).
    payload         bytea not null
);
create index opportunity_events_opportunity_idx on opportunity_events (opportunity_id, id);

------------------------------------------------------------------------------------------
-- Idempotency (R11): the first result of each (caller, method, request_id) for 24 hours.
------------------------------------------------------------------------------------------
create table idempotency_records (
    caller_id       text not null,
    method          text not null,
    request_id      text not null check (length(request_id) between 1 and 100),
    -- Hash of the request, so a reused id with a different request is refused.
    request_hash    bytea not null,
    -- The encoded response message.
    response        bytea not null,
    create_time     timestamptz not null default now(),
    primary key (caller_id, method, request_id)
);
create index idempotency_records_age_idx on idempotency_records (create_time);
