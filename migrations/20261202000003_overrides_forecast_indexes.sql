-- The second half of 20261202000002 (R17, R20), in its own transaction, so that migration
-- holds the table's exclusive lock only for its catalog changes.
--
-- The checks it added NOT VALID are validated here: a scan under SHARE UPDATE EXCLUSIVE,
-- which lets reads and writes go on.
alter table opportunities validate constraint opportunity_manual_probability_range;
alter table opportunities validate constraint opportunity_manual_forecast_category_valid;
alter table opportunities validate constraint opportunity_override_in_its_open_status;
alter table status_changes validate constraint status_change_first_has_no_manual_before;
alter table status_changes validate constraint status_change_closed_has_no_manual;

-- R20: the forecast summary reads an owner's, a team's or everyone's opportunities of a
-- range of expected close dates from the close-date indexes alone (index-only): the same
-- keys as before (the lists' close-date order), with what the forecast sums included. R14
-- over the rows (a customer or close-date filter) stays an index-only aggregate, now with
-- the manual probability it weighs.
--
-- Each index is built beside the one it replaces (the build holds a SHARE lock: reads go on,
-- writes wait), then the old one dropped and the new one named as it was (an exclusive lock
-- from the drop to the commit, no scan). CREATE INDEX CONCURRENTLY would let writes go on
-- too, but cannot run in a migration's transaction.
create index opportunity_close_date_next_idx
    on opportunities ((coalesce(expected_close_date, 'infinity'::date)), id)
    include (expected_close_date, owner_id, status_id, currency_code, amount,
             manual_probability, manual_forecast_category);
create index opportunity_owner_close_date_next_idx
    on opportunities (owner_id, (coalesce(expected_close_date, 'infinity'::date)), id)
    include (expected_close_date, status_id, currency_code, amount,
             manual_probability, manual_forecast_category);
create index opportunity_pipeline_next_idx on opportunities (owner_id, status_id, currency_code)
    include (amount, expected_close_date, state, manual_probability);

drop index opportunity_close_date_idx;
alter index opportunity_close_date_next_idx rename to opportunity_close_date_idx;
drop index opportunity_owner_close_date_idx;
alter index opportunity_owner_close_date_next_idx rename to opportunity_owner_close_date_idx;
drop index opportunity_pipeline_idx;
alter index opportunity_pipeline_next_idx rename to opportunity_pipeline_idx;
