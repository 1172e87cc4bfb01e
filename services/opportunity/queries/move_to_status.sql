update opportunities o
set status_id = $2, state = $3::text::status_kind,
    close_time = case when $3::text = 'OPEN' then null
                      when o.state = 'OPEN' or o.state::text <> $3::text then t.now
                      else o.close_time end,
    lost_reason = case when $3::text = 'LOST' then $4 else null end,
    status_change_time = t.now, updated_by = $5,
    revision = o.revision + 1, update_time = t.now
from (select salesopp_now() as now) t
where o.id = $1
returning t.now as "time!", o.close_time, o.lost_reason, o.revision,
          (select display_name from salespeople where id = $5) as "updated_by_name!"
