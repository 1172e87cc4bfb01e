-- R18 field history, close-date slips, and R19 the pipeline as it stood.
--
-- opportunity_field_changes: one row per changed field per write (amount, expected close
-- date, owner, title, next step, customer, probability), append-only like the status
-- history. Triggers write it in the change's own transaction, so no path can change a field
-- without its record: UpdateOpportunity's statement on opportunities, and for the
-- probability every status change (ChangeOpportunityStatus, UpdateOpportunity with a status,
-- R6 moves of a deleted status), which appends a status_changes entry.
--
-- Each value is the proto3 JSON form of the Opportunity field it records: a string for
-- owner_id, customer_id, title and next_step ('' when none); a number for probability; the
-- Money ({"currencyCode", "units", "nanos"}) or Date ({"year", "month", "day"}) object for
-- amount and expected_close_date, and JSON null when unset. A field's value at any moment
-- is therefore the new value of its last change up to then, else the old value of its first
-- change after, else the current column (R19).
--
-- opportunity_status_probability_changes: each change of a status's probability (R7 applies a
-- status's probability to the opportunities in it), so the pipeline of a past moment weighs
-- each opportunity with the probability it had then.
--
-- close_date_push_count / close_date_slip_days: kept by a trigger on every update of the
-- row, so they cannot be written past it: a move of the expected close date to a later date
-- counts one push and its days; an earlier date subtracts nothing.

create function salesopp_money_value(currency_code text, amount numeric) returns jsonb
language sql immutable parallel safe as $$
    select case when amount is null then 'null'::jsonb
                else jsonb_build_object('currencyCode', currency_code,
                                        'units', trunc(amount)::text,
                                        'nanos', ((amount - trunc(amount)) * 1000000000)::integer)
           end
$$;

create function salesopp_date_value(d date) returns jsonb
language sql immutable parallel safe as $$
    select case when d is null then 'null'::jsonb
                else jsonb_build_object('year', extract(year from d)::integer,
                                        'month', extract(month from d)::integer,
                                        'day', extract(day from d)::integer)
           end
$$;

-- The inverses, for R19's reads.
create function salesopp_value_amount(v jsonb) returns numeric
language sql immutable parallel safe as $$
    select case when jsonb_typeof(v) = 'object'
                then ((v ->> 'units')::numeric + (v ->> 'nanos')::numeric / 1000000000)::numeric(28, 9) end
$$;

create function salesopp_value_date(v jsonb) returns date
language sql immutable parallel safe as $$
    select case when jsonb_typeof(v) = 'object'
                then make_date((v ->> 'year')::integer, (v ->> 'month')::integer,
                               (v ->> 'day')::integer) end
$$;

create table opportunity_field_changes (
    id              bigint generated always as identity primary key,
    opportunity_id  uuid not null references opportunities (id),
    field           text not null check (field in ('amount', 'expected_close_date', 'owner_id',
                                                   'title', 'next_step', 'customer_id',
                                                   'probability')),
    old_value       jsonb not null,
    new_value       jsonb not null,
    changed_by_id   text not null references salespeople (id),
    changed_by_name text not null,
    change_time     timestamptz not null,
    constraint field_change_changes check (old_value <> new_value)
);
-- An opportunity's changes in order (ListOpportunityChanges, R19's per-opportunity read).
create index opportunity_field_change_idx on opportunity_field_changes (opportunity_id, id);
-- R19: the opportunities whose owner changed after a moment, which an owner's pipeline of
-- that moment may hold though someone else owns them now.
create index opportunity_owner_change_idx on opportunity_field_changes (change_time)
    include (opportunity_id) where field = 'owner_id';

create function field_change_append_only() returns trigger
language plpgsql as $$
begin
    perform salesopp_violation('HISTORY_APPEND_ONLY', 'field history is append-only');
    return null;
end;
$$;
create trigger field_change_append_only before update or delete on opportunity_field_changes
    for each row execute function field_change_append_only();
create trigger field_change_no_truncate before truncate on opportunity_field_changes
    for each statement execute function field_change_append_only();

create function opportunity_field_history() returns trigger
language plpgsql as $$
begin
    insert into opportunity_field_changes
        (opportunity_id, field, old_value, new_value, changed_by_id, changed_by_name, change_time)
    select new.id, f.field, f.old_value, f.new_value, new.updated_by,
           (select display_name from salespeople where id = new.updated_by), new.update_time
    from (values
        ('amount', salesopp_money_value(old.currency_code, old.amount),
                   salesopp_money_value(new.currency_code, new.amount)),
        ('expected_close_date', salesopp_date_value(old.expected_close_date),
                                salesopp_date_value(new.expected_close_date)),
        ('owner_id', to_jsonb(old.owner_id), to_jsonb(new.owner_id)),
        ('title', to_jsonb(old.title), to_jsonb(new.title)),
        ('next_step', to_jsonb(coalesce(old.next_step, '')), to_jsonb(coalesce(new.next_step, ''))),
        ('customer_id', to_jsonb(old.customer_id::text), to_jsonb(new.customer_id::text))
    ) f (field, old_value, new_value)
    where f.old_value <> f.new_value;
    return null;
end;
$$;
-- The WHEN clause is evaluated without entering PL/pgSQL: a write that changes none of
-- these fields (a status move, the stale sweep) costs nothing here.
create trigger opportunity_field_history after update on opportunities
    for each row
    when ((old.currency_code, old.amount, old.expected_close_date, old.owner_id, old.title,
           coalesce(old.next_step, ''), old.customer_id)
          is distinct from
          (new.currency_code, new.amount, new.expected_close_date, new.owner_id, new.title,
           coalesce(new.next_step, ''), new.customer_id))
    execute function opportunity_field_history();

-- A status change that changes the probability records it as a field change of the
-- opportunity, by the one who made the move, at its time.
create function status_change_probability_history() returns trigger
language plpgsql as $$
begin
    insert into opportunity_field_changes
        (opportunity_id, field, old_value, new_value, changed_by_id, changed_by_name, change_time)
    values (new.opportunity_id, 'probability', to_jsonb(new.from_probability),
            to_jsonb(new.to_probability), new.changed_by_id, new.changed_by_name,
            new.change_time);
    return null;
end;
$$;
create trigger status_change_probability_history after insert on status_changes
    for each row
    when (new.sequence > 1 and new.from_probability <> new.to_probability)
    execute function status_change_probability_history();

alter table opportunities
    add column close_date_push_count integer not null default 0
        check (close_date_push_count >= 0),
    add column close_date_slip_days integer not null default 0
        check (close_date_slip_days >= 0);

create function opportunity_close_date_slip() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        new.close_date_push_count := 0;
        new.close_date_slip_days := 0;
        return new;
    end if;
    new.close_date_push_count := old.close_date_push_count;
    new.close_date_slip_days := old.close_date_slip_days;
    if new.expected_close_date > old.expected_close_date then
        new.close_date_push_count := new.close_date_push_count + 1;
        new.close_date_slip_days :=
            new.close_date_slip_days + (new.expected_close_date - old.expected_close_date);
    end if;
    return new;
end;
$$;
create trigger opportunity_close_date_slip
    before insert or update of expected_close_date, close_date_push_count, close_date_slip_days
    on opportunities
    for each row execute function opportunity_close_date_slip();

create table opportunity_status_probability_changes (
    id              bigint generated always as identity primary key,
    status_id       uuid not null references opportunity_statuses (id),
    old_probability smallint not null,
    new_probability smallint not null,
    change_time     timestamptz not null
);
create index status_probability_change_idx
    on opportunity_status_probability_changes (status_id, id);

create trigger status_probability_change_append_only
    before update or delete on opportunity_status_probability_changes
    for each row execute function field_change_append_only();
create trigger status_probability_change_no_truncate
    before truncate on opportunity_status_probability_changes
    for each statement execute function field_change_append_only();

create function status_probability_history() returns trigger
language plpgsql as $$
begin
    insert into opportunity_status_probability_changes
        (status_id, old_probability, new_probability, change_time)
    values (new.id, old.probability, new.probability, new.update_time);
    return null;
end;
$$;
create trigger status_probability_history after update of probability on opportunity_statuses
    for each row when (old.probability <> new.probability)
    execute function status_probability_history();

-- A status's probability at a moment: the new value of its last change up to then, else the
-- old value of its first change after, else its current probability.
create function salesopp_status_probability_at(status uuid, at timestamptz) returns smallint
language sql stable parallel safe as $$
    select coalesce(
        (select new_probability from opportunity_status_probability_changes
         where status_id = status and change_time <= at order by id desc limit 1),
        (select old_probability from opportunity_status_probability_changes
         where status_id = status and change_time > at order by id limit 1),
        (select probability from opportunity_statuses where id = status))
$$;
