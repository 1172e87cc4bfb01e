select opportunity_id as "opportunity_id!", status_id as "status_id!",
       display_name as "display_name!", entries as "entries!",
       cumulative_micros as "cumulative_micros!", current_stay_micros,
       last_entered_time as "last_entered_time!", last_exited_time
from opportunity_status_durations_now
where opportunity_id = $1
order by position
