-- One active NATS relay across replicas (services/relay/src/lease.rs), and the events it set
-- aside because they do not decode.

-- The lease of each relay name: the replica holding it publishes, the others stand by and
-- take it once it expires (it is renewed every couple of seconds while held, and released
-- at SIGTERM). The relay records progress in event_relay_offsets only in a statement that
-- finds its lease still held here (fencing): a relay that lost its lease records nothing.
create table event_relay_leases (
    relay_name   text primary key check (length(relay_name) between 1 and 100),
    -- The holding process (a random id per process) and, for people, its host name.
    holder       uuid not null,
    holder_name  text not null default '',
    -- +1 at every change of holder: how often the relay failed over.
    epoch        bigint not null default 1 check (epoch >= 1),
    acquire_time timestamptz not null default now(),
    renew_time   timestamptz not null default now(),
    -- The lease is free from this moment (Postgres' clock: every replica compares with it).
    expire_time  timestamptz not null
);

-- Events a relay could not publish because their payload does not decode as an
-- OpportunityEvent: logged, counted (salesopp_event_dead_letters_total) and kept here with
-- the decoding error; the relay moves on to the next event.
create table event_dead_letters (
    relay_name     text not null check (length(relay_name) between 1 and 100),
    seq            bigint not null,
    event_id       uuid not null,
    event_type     text not null,
    opportunity_id uuid not null,
    payload        bytea not null,
    error          text not null,
    create_time    timestamptz not null default now(),
    primary key (relay_name, seq)
);
