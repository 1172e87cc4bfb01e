-- R17 probability overrides and R20 forecast categories.
--
-- An open opportunity's probability and forecast category may be set by hand
-- (manual_probability, manual_forecast_category); its effective values are the manual ones
-- when set, else its status's. override_status_id names the status the overrides were set
-- in: a move to another status that does not name its own (the suite's moves never do, and
-- UpdateOpportunity names the new status only when the same call sets an override) voids
-- them, so a status change resets both to the status's (STATUS), and a closed opportunity has
-- none: WON is always 100 and CLOSED, LOST 0 and OMITTED (the statuses' fixed values).
--
-- Weighted amounts use the effective probability everywhere: the pipeline totals (R14) keep,
-- per group, the amount and the weighted sum of the overridden opportunities apart, so a
-- status's own probability change still re-weighs the rest without touching a total.
--
-- R18 records every change of the effective probability, per opportunity: a status change
-- (the history entry now carries the manual probabilities before and after), an override
-- set or cleared, and a status's own probability change (one entry for each opportunity
-- that follows that status), so the probability an opportunity had at any moment is in its
-- history (R19).

------------------------------------------------------------------------------------------
-- R20: each status's forecast category.
------------------------------------------------------------------------------------------
alter table opportunity_statuses
    add column forecast_category text,
    -- Who last changed the status (its probability changes are recorded per opportunity).
    add column updated_by text references salespeople (id);

-- The defaults: open statuses PIPELINE, the last two open ones BEST_CASE and COMMIT, WON
-- CLOSED, LOST OMITTED.
update opportunity_statuses set forecast_category =
    case kind when 'WON' then 'CLOSED' when 'LOST' then 'OMITTED' else 'PIPELINE' end;
with open_from_end as (
    select id, row_number() over (order by position desc) as n
    from opportunity_statuses where kind = 'OPEN' and not archived
)
update opportunity_statuses s
set forecast_category = case f.n when 1 then 'COMMIT' else 'BEST_CASE' end
from open_from_end f
where f.id = s.id and f.n <= 2;
-- The deferred default check (R4) runs now, so the table can be altered.
set constraints status_exactly_one_default immediate;

alter table opportunity_statuses
    alter column forecast_category set not null,
    add constraint status_forecast_category_fits_kind check (
        (kind = 'WON' and forecast_category = 'CLOSED')
        or (kind = 'LOST' and forecast_category = 'OMITTED')
        or (kind = 'OPEN' and forecast_category in ('PIPELINE', 'BEST_CASE', 'COMMIT', 'OMITTED')));

-- A new status without a category takes its kind's: PIPELINE, CLOSED or OMITTED.
create function status_forecast_category_default() returns trigger
language plpgsql as $$
begin
    if new.forecast_category is null then
        new.forecast_category :=
            case new.kind when 'WON' then 'CLOSED' when 'LOST' then 'OMITTED' else 'PIPELINE' end;
    end if;
    return new;
end;
$$;
create trigger status_forecast_category_default before insert on opportunity_statuses
    for each row execute function status_forecast_category_default();

------------------------------------------------------------------------------------------
-- R17, R20: the overrides of an open opportunity.
------------------------------------------------------------------------------------------
-- The checks are added NOT VALID (no scan of the table under this migration's lock) and
-- validated by the next migration, in its own transaction, under a lock that lets reads and
-- writes go on. They hold for every write from now on.
alter table opportunities
    add column manual_probability smallint,
    add column manual_forecast_category text,
    add column override_status_id uuid,
    add constraint opportunity_manual_probability_range
        check (manual_probability between 0 and 100) not valid,
    add constraint opportunity_manual_forecast_category_valid
        check (manual_forecast_category in ('PIPELINE', 'BEST_CASE', 'COMMIT', 'OMITTED')) not valid,
    add constraint opportunity_override_in_its_open_status check (
        (override_status_id is null) = (manual_probability is null and manual_forecast_category is null)
        and (override_status_id is null or (override_status_id = status_id and state = 'OPEN')))
        not valid;

create function opportunity_override_status() returns trigger
language plpgsql as $$
begin
    if tg_op = 'UPDATE' and new.status_id <> old.status_id and old.override_status_id is not null
       and new.override_status_id is not distinct from old.override_status_id then
        -- Moved, and the overrides are still those of the status it left: void.
        new.manual_probability := null;
        new.manual_forecast_category := null;
    end if;
    if new.manual_probability is null and new.manual_forecast_category is null then
        new.override_status_id := null;
    elsif new.override_status_id is null then
        new.override_status_id := new.status_id;
    end if;
    return new;
end;
$$;
create trigger opportunity_override_status
    before insert or update of status_id, manual_probability, manual_forecast_category, override_status_id
    on opportunities
    for each row execute function opportunity_override_status();

------------------------------------------------------------------------------------------
-- R17 in the status history: the manual probabilities before and after each change (null:
-- the status's), so every entry carries the status's and the effective probability.
------------------------------------------------------------------------------------------
alter table status_changes
    add column from_manual_probability smallint,
    add column to_manual_probability smallint,
    add constraint status_change_first_has_no_manual_before
        check (sequence > 1 or from_manual_probability is null) not valid,
    add constraint status_change_closed_has_no_manual
        check (to_kind = 'OPEN' or to_manual_probability is null) not valid;

-- R18: a status change records the change of the effective probability.
create or replace function status_change_probability_history() returns trigger
language plpgsql as $$
begin
    insert into opportunity_field_changes
        (opportunity_id, field, old_value, new_value, changed_by_id, changed_by_name, change_time)
    values (new.opportunity_id, 'probability',
            to_jsonb(coalesce(new.from_manual_probability, new.from_probability)),
            to_jsonb(coalesce(new.to_manual_probability, new.to_probability)),
            new.changed_by_id, new.changed_by_name, new.change_time);
    return null;
end;
$$;
drop trigger status_change_probability_history on status_changes;
create trigger status_change_probability_history after insert on status_changes
    for each row
    when (new.sequence > 1
          and coalesce(new.from_manual_probability, new.from_probability)
              <> coalesce(new.to_manual_probability, new.to_probability))
    execute function status_change_probability_history();

-- R18: a write that stays in its status records its fields and, when its override changes,
-- the effective probability. The status row is read FOR SHARE, so a concurrent change of the
-- status's own probability (which records one entry per opportunity following it) either
-- sees this write or waits for it.
create or replace function opportunity_field_history() returns trigger
language plpgsql as $$
declare
    status_probability smallint;
begin
    if old.status_id = new.status_id
       and old.manual_probability is distinct from new.manual_probability then
        status_probability :=
            (select probability from opportunity_statuses where id = new.status_id for share);
    end if;
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
        ('customer_id', to_jsonb(old.customer_id::text), to_jsonb(new.customer_id::text)),
        ('probability', coalesce(to_jsonb(coalesce(old.manual_probability, status_probability)), 'null'),
                        coalesce(to_jsonb(coalesce(new.manual_probability, status_probability)), 'null'))
    ) f (field, old_value, new_value)
    where f.old_value <> f.new_value;
    return null;
end;
$$;
drop trigger opportunity_field_history on opportunities;
create trigger opportunity_field_history after update on opportunities
    for each row
    when ((old.currency_code, old.amount, old.expected_close_date, old.owner_id, old.title,
           coalesce(old.next_step, ''), old.customer_id)
          is distinct from
          (new.currency_code, new.amount, new.expected_close_date, new.owner_id, new.title,
           coalesce(new.next_step, ''), new.customer_id)
          or (old.status_id = new.status_id
              and old.manual_probability is distinct from new.manual_probability))
    execute function opportunity_field_history();

-- R18: a status's own probability change is a probability change of every opportunity that
-- follows it (no override), by whoever changed the status, at its time.
create or replace function status_probability_history() returns trigger
language plpgsql as $$
begin
    if new.updated_by is null then
        perform salesopp_violation('STATUS_UPDATED_BY',
            'a change of a status''s probability names who made it (updated_by)');
    end if;
    insert into opportunity_status_probability_changes
        (status_id, old_probability, new_probability, change_time)
    values (new.id, old.probability, new.probability, new.update_time);
    insert into opportunity_field_changes
        (opportunity_id, field, old_value, new_value, changed_by_id, changed_by_name, change_time)
    select o.id, 'probability', to_jsonb(old.probability), to_jsonb(new.probability),
           new.updated_by, (select display_name from salespeople where id = new.updated_by),
           new.update_time
    from opportunities o
    where o.status_id = new.id and o.manual_probability is null;
    return null;
end;
$$;

------------------------------------------------------------------------------------------
-- R14 with R17: the totals keep the overridden opportunities' amount and weighted sum apart.
-- weighted x 100 of a group = (amount - manual_amount) x status probability + manual_weighted.
------------------------------------------------------------------------------------------
alter table pipeline_totals
    add column manual_amount numeric not null default 0,
    add column manual_weighted numeric not null default 0;
alter table pipeline_deltas
    add column manual_amount numeric not null default 0,
    add column manual_weighted numeric not null default 0;

create or replace function pipeline_delta() returns trigger language plpgsql as $$
begin
    if tg_op = 'UPDATE'
       and (old.owner_id, old.status_id, old.currency_code, old.amount, old.manual_probability)
           is not distinct from
           (new.owner_id, new.status_id, new.currency_code, new.amount, new.manual_probability) then
        return null;
    end if;
    if tg_op in ('UPDATE', 'DELETE') then
        insert into pipeline_deltas
            (owner_id, status_id, currency_code, count, amount, manual_amount, manual_weighted)
        values (old.owner_id, old.status_id, coalesce(old.currency_code, ''), -1,
                -coalesce(old.amount, 0),
                case when old.manual_probability is not null then -coalesce(old.amount, 0) else 0 end,
                -coalesce(old.amount * old.manual_probability, 0));
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into pipeline_deltas
            (owner_id, status_id, currency_code, count, amount, manual_amount, manual_weighted)
        values (new.owner_id, new.status_id, coalesce(new.currency_code, ''), 1,
                coalesce(new.amount, 0),
                case when new.manual_probability is not null then coalesce(new.amount, 0) else 0 end,
                coalesce(new.amount * new.manual_probability, 0));
    end if;
    return null;
end $$;

drop trigger opportunity_pipeline_delta on opportunities;
create trigger opportunity_pipeline_delta
    after insert or update of owner_id, status_id, currency_code, amount, manual_probability or delete
    on opportunities for each row execute function pipeline_delta();

create or replace function pipeline_totals_rebuild() returns void language sql as $$
    lock table pipeline_deltas in exclusive mode;
    delete from pipeline_deltas;
    delete from pipeline_totals;
    insert into pipeline_totals
        (owner_id, status_id, currency_code, count, amount, manual_amount, manual_weighted)
    select owner_id, status_id, coalesce(currency_code, ''), count(*), coalesce(sum(amount), 0),
           coalesce(sum(amount) filter (where manual_probability is not null), 0),
           coalesce(sum(amount * manual_probability), 0)
    from opportunities
    group by owner_id, status_id, coalesce(currency_code, '');
$$;
