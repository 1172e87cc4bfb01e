select o.id as "id!"
from opportunity_statuses s
cross join lateral (
    select o.id, o.update_time from opportunities o
    where o.status_id = s.id and o.state = 'OPEN'
      and o.stale_notified_for is distinct from o.update_time
      and o.update_time <= (select salesopp_now()) - s.stale_after_days * interval '24 hours'
    order by o.update_time limit $1) o
where s.stale_after_days > 0
order by o.update_time limit $1
