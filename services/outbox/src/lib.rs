//! The opportunity event outbox, in one place: every rule about the change feed lives here
//! and the opportunity service (writes and `WatchOpportunityEvents`) and the NATS relay use
//! it, never a query of their own.
//!
//! - [`write`]: the event row every opportunity change appends in its own transaction,
//!   bumping the opportunity's `version` (one write, one version).
//! - [`sequencer`]: gives committed events their delivery position (`seq`) in commit order
//!   and per opportunity in version order, without any lock on writers; one active across
//!   replicas. [`wake`]: the wake-up a write sends it once committed.
//! - [`backlog`]: how many written events wait to be placed, and for how long (metrics).
//! - [`read`]: the ordered reader by position, with the retention horizon in the same
//!   snapshot; [`cursor`]: positions as opaque cursors.
//! - [`tail`]: one reader per process that fans new events out to every open stream, woken
//!   by the sequencer's NOTIFY.
//! - [`retention`]: deletes what is past its retention, oldest first, one replica at a time.

pub mod backlog;
pub mod cursor;
pub mod read;
pub mod retention;
pub mod sequencer;
pub mod tail;
pub mod wake;
pub mod write;

pub use cursor::{cursor, parse_cursor};
pub use read::{Bounds, Page, ReadError, StoredEvent};
pub use tail::Tail;
pub use wake::Wake;
pub use write::{NewEvent, append, append_many, append_moving};
