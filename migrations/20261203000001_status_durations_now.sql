-- R15: the status durations as readers see them, the current stay counted up to the
-- statement clock (salesopp_now()). One definition for the two reads of it: an opportunity
-- alone (GetOpportunity, UpdateOpportunity, ChangeOpportunityStatus) by `opportunity_id = $1`,
-- whose prepared statement keeps one generic plan, and a page or a batch by
-- `opportunity_id = any($1)`. The view is inlined: both filters reach the primary key.

create view opportunity_status_durations_now as
select d.opportunity_id, d.status_id, s.display_name, s.position, d.entries,
       (extract(epoch from d.cumulative_closed
                           + case when o.status_id = d.status_id
                                  then t.now - d.last_entered_time
                                  else interval '0' end) * 1000000)::bigint
           as cumulative_micros,
       case when o.status_id = d.status_id
            then (extract(epoch from t.now - d.last_entered_time) * 1000000)::bigint
       end as current_stay_micros,
       d.last_entered_time, d.last_exited_time
from opportunity_status_durations d
join opportunities o on o.id = d.opportunity_id
join opportunity_statuses s on s.id = d.status_id
cross join (select salesopp_now() as now) t;

-- The statement clock in PL/pgSQL: a SQL function with a sub-select is never inlined, and
-- Postgres then parses and plans its body again in every statement that calls it (about
-- 30 microseconds of server time each); PL/pgSQL keeps the plan for the session. The same
-- answer: the test clock when a test has set one, else clock_timestamp().
create or replace function salesopp_now() returns timestamptz
language plpgsql volatile parallel safe as $$
declare
    test_now timestamptz;
begin
    select now into test_now from salesopp_test_clock;
    return coalesce(test_now, clock_timestamp());
end
$$;
