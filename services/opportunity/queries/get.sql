select o.id, o.customer_id, o.owner_id, ow.team as owner_team, o.title, o.currency_code,
       o.amount::text as amount, o.expected_close_date, o.status_id,
       s.display_name as status_name,
       coalesce(o.manual_probability, s.probability) as "probability!",
       s.probability as status_probability, o.manual_probability,
       coalesce(o.manual_forecast_category, s.forecast_category) as "forecast_category!",
       s.forecast_category as status_forecast_category, o.manual_forecast_category,
       o.state::text as "state!: OpportunityState",
       o.lost_reason, o.next_step, o.close_time, o.status_change_time, o.revision, o.version,
       o.create_time, o.update_time, o.created_by, cb.display_name as created_by_name,
       o.updated_by, ub.display_name as updated_by_name,
       salesopp_stale_since(o.state, o.update_time, s.stale_after_days) as stale_since,
       o.close_date_push_count, o.close_date_slip_days
from opportunities o
join salespeople ow on ow.id = o.owner_id
join opportunity_statuses s on s.id = o.status_id
join salespeople cb on cb.id = o.created_by
join salespeople ub on ub.id = o.updated_by
where o.id = $1
