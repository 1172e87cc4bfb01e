insert into opportunity_events
    (event_id, type, opportunity_id, occur_time, actor_id, actor_name, request_id,
     owner_id, previous_owner_id, payload, version)
select $1::uuid, $2::text, $3::uuid, $4::timestamptz, $5::text, $6::text, $7::text,
       $8::text, $9::text, $10::bytea, o.version
from opportunities o
where o.id = $3 and o.version = $11::bigint
