-- Each schema rule answers its own reason, and an opportunity's amount becomes optional.
--
-- Reasons: every trigger raises SQLSTATE 'SO001' with the rule's ErrorInfo reason as the
-- error's constraint name (RAISE ... CONSTRAINT), so the services answer e.g.
-- CUSTOMER_ARCHIVED or HISTORY_APPEND_ONLY instead of one generic "schema rule"
-- (services/kit/src/error.rs lists every reason; the README's error table is that list).

create or replace function salesopp_violation(reason text, message text) returns void
language plpgsql as $$
begin
    raise exception using errcode = 'SO001', message = message, constraint = reason;
end;
$$;

-- R3: a status's kind never changes, and statuses are never erased (R6 archives them).
create or replace function status_guard() returns trigger
language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        perform salesopp_violation('STATUS_NEVER_ERASED', 'statuses are archived, never deleted');
    elsif new.kind <> old.kind then
        perform salesopp_violation('STATUS_KIND_IMMUTABLE', 'a status''s kind never changes');
    end if;
    return coalesce(new, old);
end;
$$;

-- R4: exactly one default at the end of every transaction that touches statuses.
create or replace function status_exactly_one_default() returns trigger
language plpgsql as $$
begin
    if (select count(*) from opportunity_statuses where is_default) <> 1 then
        perform salesopp_violation('DEFAULT_STATUS_REQUIRED', 'exactly one status must be the default');
    end if;
    return null;
end;
$$;

-- R1: a new opportunity belongs to a customer that is not archived (see the first migration
-- for the share lock's purpose).
create or replace function opportunity_customer_is_live() returns trigger
language plpgsql as $$
begin
    if (select archived from customers where id = new.customer_id for share) then
        perform salesopp_violation('CUSTOMER_ARCHIVED', 'an archived customer takes no new opportunities');
    end if;
    return new;
end;
$$;

create or replace function opportunity_customer_immutable() returns trigger
language plpgsql as $$
begin
    if new.customer_id <> old.customer_id then
        perform salesopp_violation('CUSTOMER_IMMUTABLE', 'an opportunity''s customer never changes');
    end if;
    return new;
end;
$$;

-- R6: no opportunity enters an archived status.
create or replace function opportunity_status_is_live() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' or new.status_id is distinct from old.status_id then
        if (select archived from opportunity_statuses where id = new.status_id for share) then
            perform salesopp_violation('STATUS_ARCHIVED', 'an archived status takes no opportunities');
        end if;
    end if;
    return new;
end;
$$;

-- R9: history is never edited or deleted.
create or replace function status_change_append_only() returns trigger
language plpgsql as $$
begin
    perform salesopp_violation('HISTORY_APPEND_ONLY', 'status history is append-only');
    return null;
end;
$$;

-- R10: the chain has no gap: an entry starts where the one before it ended.
create or replace function status_change_chain() returns trigger
language plpgsql as $$
begin
    if new.sequence > 1 and not exists (
        select 1 from status_changes
        where opportunity_id = new.opportunity_id
          and sequence = new.sequence - 1
          and to_status_id = new.from_status_id) then
        perform salesopp_violation('HISTORY_CHAIN_BROKEN', 'a status change must start from the previous change''s status');
    end if;
    return new;
end;
$$;

drop function salesopp_violation(text);

------------------------------------------------------------------------------------------
-- An opportunity's amount is optional (unknown at first contact): no amount means no
-- currency either. Pipelines count such opportunities in a group of their own and add
-- nothing to any amount; "amount desc" lists them last (-1 stands for them in the order).
------------------------------------------------------------------------------------------
alter table opportunities
    alter column amount drop not null,
    alter column currency_code drop not null,
    add constraint opportunity_amount_has_currency check ((amount is null) = (currency_code is null));
alter table status_changes
    alter column amount drop not null,
    alter column currency_code drop not null,
    add constraint status_change_amount_has_currency check ((amount is null) = (currency_code is null));

drop index opportunity_amount_idx;
drop index opportunity_owner_amount_idx;
create index opportunity_amount_idx on opportunities ((coalesce(amount, -1)) desc, id desc);
create index opportunity_owner_amount_idx on opportunities (owner_id, (coalesce(amount, -1)) desc, id desc);
