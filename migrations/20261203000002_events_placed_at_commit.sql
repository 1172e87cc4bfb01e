-- The sequencer places each event as soon as its transaction has committed, in event id order
-- within a pass, instead of waiting until no older transaction runs: its candidates are the
-- unplaced events by id (services/outbox/src/sequencer.rs).
create index opportunity_events_unplaced_idx on opportunity_events (id) where seq is null;
drop index opportunity_events_unsequenced_idx;
