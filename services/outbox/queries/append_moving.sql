with bumped as (
    update opportunities set version = $11::bigint where id = $3 and version = $11::bigint - 1
    returning version)
insert into opportunity_events
    (event_id, type, opportunity_id, occur_time, actor_id, actor_name, request_id,
     owner_id, previous_owner_id, payload, version)
select $1::uuid, $2::text, $3::uuid, $4::timestamptz, $5::text, $6::text, $7::text,
       $8::text, $9::text, $10::bytea, bumped.version
from bumped
