with opportunity as (select status_id from opportunities where id = $2)
select s.id, s.display_name, s.kind::text as "kind!: StatusKind", s.probability,
       s.forecast_category, s.archived,
       (select status_id from opportunity) as "current_status_id?"
from opportunity_statuses s
where s.id = $1 or s.id = (select status_id from opportunity)
order by s.id for share
