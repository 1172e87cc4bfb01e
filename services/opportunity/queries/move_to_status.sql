update opportunities o
set status_id = $2::uuid, state = $3::text::status_kind,
    close_time = case when $3::text = 'OPEN' then null
                      when o.state = 'OPEN' or o.state::text <> $3::text then t.now
                      else o.close_time end,
    lost_reason = case when $3::text = 'LOST' then $4 else null end,
    status_change_time = t.now, updated_by = $5,
    -- R17, R20: the overrides of the new status (none unless the call sets them).
    manual_probability = $6, manual_forecast_category = $7,
    override_status_id = case when $6::smallint is not null or $7::text is not null then $2::uuid end,
    revision = o.revision + 1, update_time = t.now,
    -- The version of the event of this change (the outbox append checks it): one write of the row.
    version = o.version + 1
from (select salesopp_now() as now) t
where o.id = $1
returning t.now as "time!", o.close_time, o.lost_reason, o.revision, o.version,
          (select display_name from salespeople where id = $5) as "updated_by_name!"
