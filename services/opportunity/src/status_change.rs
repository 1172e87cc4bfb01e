//! The one implementation of a status change (R8, R9), used by ChangeOpportunityStatus, by
//! UpdateOpportunity with `status_id` in its mask, and by status deletion (R6): the new
//! state, one history entry with the snapshots of this moment (R7), and one outbox event,
//! all in the caller's transaction, on an opportunity whose row lock the caller holds (R10).

use chrono::{DateTime, Utc};
use prost::Message as _;
use salesopp_kit::Principal;
use salesopp_kit::error::{ApiError, ApiResult};
use salesopp_kit::time::timestamp;
use salesopp_proto::common::v1::Actor;
use salesopp_proto::opportunity::v1 as pb;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::convert::{opportunity_to_proto, status_change_to_proto};
use crate::store::{self, NewStatusChange, OpportunityRow, Overrides, StatusChangeRow, StatusInfo};
use salesopp_outbox::NewEvent;

/// The event types, as stored in the outbox.
pub const CREATED: &str = "CREATED";
pub const UPDATED: &str = "UPDATED";
pub const STATUS_CHANGED: &str = "STATUS_CHANGED";
/// R16: written by the stale sweep ([`crate::stale`]).
pub const STALE: &str = "STALE";

fn event_type(name: &str) -> pb::OpportunityEventType {
    match name {
        CREATED => pb::OpportunityEventType::Created,
        UPDATED => pb::OpportunityEventType::Updated,
        STALE => pb::OpportunityEventType::Stale,
        _ => pb::OpportunityEventType::StatusChanged,
    }
}

/// Who moves the opportunity's version to its event's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The change's own write of the row did (an insert at 1, a status move): `after`
    /// carries the event's version.
    Written,
    /// The event does (an update of fields, the stale mark): `after` is the opportunity as
    /// written, before its version moves.
    ByEvent,
}

/// Writes one outbox event with the before and after of the change. Returns the
/// opportunity's new version (the event's), which every answer of the write must show.
#[allow(clippy::too_many_arguments)]
pub async fn append_event(
    tx: &mut PgConnection,
    kind: &'static str,
    actor: &Principal,
    time: DateTime<Utc>,
    before: Option<pb::Opportunity>,
    mut after: pb::Opportunity,
    status_change: Option<pb::StatusChange>,
    request_id: Option<&str>,
    version: Version,
) -> ApiResult<i64> {
    if version == Version::ByEvent {
        after.version += 1;
    }
    let event = Event::new(kind, actor, time, before, after, status_change, request_id)?;
    let row = event.row(actor, time, request_id);
    match version {
        Version::Written => salesopp_outbox::append(tx, &row).await?,
        Version::ByEvent => salesopp_outbox::append_moving(tx, &row).await?,
    }
    Ok(event.version)
}

/// One outbox event, encoded and ready to write (one at a time with [`append_event`], or a
/// batch's at once with `salesopp_outbox::append_many`).
pub struct Event {
    pub event_id: Uuid,
    pub kind: &'static str,
    pub opportunity_id: Uuid,
    pub owner_id: String,
    pub previous_owner_id: Option<String>,
    /// The opportunity's version this event makes.
    pub version: i64,
    pub payload: Vec<u8>,
}

impl Event {
    /// The event of a change of `after` (the opportunity as written, at the event's version)
    /// by `actor` at `time`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: &'static str,
        actor: &Principal,
        time: DateTime<Utc>,
        before: Option<pb::Opportunity>,
        after: pb::Opportunity,
        status_change: Option<pb::StatusChange>,
        request_id: Option<&str>,
    ) -> ApiResult<Self> {
        let version = after.version;
        let event_id = Uuid::new_v4();
        let opportunity_id = Uuid::parse_str(&after.id).map_err(ApiError::internal)?;
        let owner_id = after.owner_id.clone();
        let previous_owner_id = before
            .as_ref()
            .map(|b| b.owner_id.clone())
            .filter(|previous| *previous != owner_id);
        let event = pb::OpportunityEvent {
            event_id: event_id.to_string(),
            cursor: String::new(),
            r#type: event_type(kind).into(),
            opportunity_id: after.id.clone(),
            occur_time: Some(timestamp(time)),
            actor: Some(Actor {
                id: actor.id.clone(),
                display_name: actor.display_name.clone(),
            }),
            before,
            after: Some(after),
            status_change,
            request_id: request_id.unwrap_or_default().to_owned(),
            version,
        };
        Ok(Self {
            event_id,
            kind,
            opportunity_id,
            owner_id,
            previous_owner_id,
            version,
            payload: event.encode_to_vec(),
        })
    }

    /// The outbox row of this event.
    pub fn row<'a>(
        &'a self,
        actor: &'a Principal,
        time: DateTime<Utc>,
        request_id: Option<&'a str>,
    ) -> NewEvent<'a> {
        NewEvent {
            event_id: self.event_id,
            event_type: self.kind,
            opportunity_id: self.opportunity_id,
            time,
            actor_id: &actor.id,
            actor_name: &actor.display_name,
            request_id,
            owner_id: &self.owner_id,
            previous_owner_id: self.previous_owner_id.as_deref(),
            version: self.version,
            payload: &self.payload,
        }
    }
}

/// The status the opportunity is in now, as a snapshot for its history.
pub fn current_status(row: &OpportunityRow) -> StatusInfo {
    StatusInfo {
        id: row.status_id,
        display_name: row.status_name.clone(),
        kind: row.state.kind(),
        probability: row.status_probability,
        forecast_category: row.status_forecast_category.clone(),
        archived: false,
    }
}

/// What one status change asks for.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub to: &'a StatusInfo,
    pub note: &'a str,
    pub lost_reason: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// R17, R20: the overrides in the new status; none (the default) follows the status.
    pub overrides: &'a Overrides,
}

/// Moves the locked opportunity `current` to `change.to`. `before` is the opportunity as the
/// caller first read it (it differs from `current` when the same call also changed other
/// fields), for the event. Moving to the status it already has records nothing: `None`.
pub async fn change_status(
    tx: &mut PgConnection,
    current: &OpportunityRow,
    before: &pb::Opportunity,
    change: Change<'_>,
    actor: &Principal,
) -> ApiResult<Option<(OpportunityRow, StatusChangeRow)>> {
    if current.status_id == change.to.id {
        return Ok(None);
    }
    crate::domain::check_lost_reason("lost_reason", change.to.kind, change.lost_reason.is_some())?;
    let from = current_status(current);
    let amount = current.money();
    let moved = store::move_to_status(
        tx,
        current.id,
        change.to,
        change.lost_reason,
        &actor.id,
        change.overrides,
    )
    .await?;
    let time = moved.time;
    let entry = store::append_status_change(
        tx,
        &NewStatusChange {
            opportunity_id: current.id,
            from: Some((&from, current.status_change_time)),
            to: change.to,
            actor_id: &actor.id,
            actor_name: &actor.display_name,
            time,
            note: change.note,
            amount: amount.as_ref(),
            lost_reason: change.lost_reason,
            request_id: change.request_id,
            from_manual_probability: current.manual_probability,
            to_manual_probability: change.overrides.probability,
        },
    )
    .await?;
    let mut after = moved_row(current, &change, moved, actor);
    after.version = append_event(
        tx,
        STATUS_CHANGED,
        actor,
        time,
        Some(before.clone()),
        opportunity_to_proto(&after),
        Some(status_change_to_proto(&entry)),
        change.request_id,
        Version::Written,
    )
    .await?;
    Ok(Some((after, entry)))
}

/// The row after a move: the locked `current` with what the move changed (its owner,
/// customer and other fields are untouched, so no second read of the row).
pub fn moved_row(
    current: &OpportunityRow,
    change: &Change<'_>,
    moved: store::Moved,
    actor: &Principal,
) -> OpportunityRow {
    let time = moved.time;
    OpportunityRow {
        status_id: change.to.id,
        status_name: change.to.display_name.clone(),
        probability: change
            .overrides
            .probability
            .unwrap_or(change.to.probability),
        status_probability: change.to.probability,
        manual_probability: change.overrides.probability,
        forecast_category: change
            .overrides
            .forecast_category
            .clone()
            .unwrap_or_else(|| change.to.forecast_category.clone()),
        status_forecast_category: change.to.forecast_category.clone(),
        manual_forecast_category: change.overrides.forecast_category.clone(),
        state: change.to.kind.state(),
        lost_reason: moved.lost_reason,
        close_time: moved.close_time,
        status_change_time: time,
        revision: moved.revision,
        version: moved.version,
        update_time: time,
        updated_by: actor.id.clone(),
        updated_by_name: moved.updated_by_name,
        // Just changed: not stale (R16).
        stale_since: None,
        ..current.clone()
    }
}

/// R6: moves every opportunity in `from` to `to`, each as a normal status change with its
/// history entry and event, in the caller's transaction. Returns how many moved.
pub async fn move_all(
    tx: &mut PgConnection,
    from: Uuid,
    to: Uuid,
    note: &str,
    actor: &Principal,
) -> ApiResult<i64> {
    let target = store::share_status(tx, to).await?.ok_or_else(|| {
        ApiError::invalid(
            "replacement_status_id",
            format!("no status has the id {to}"),
        )
    })?;
    let ids = store::lock_in_status(tx, from).await?;
    let mut moved = 0;
    for id in ids {
        let current = store::lock(tx, id)
            .await?
            .ok_or_else(|| ApiError::internal("opportunity vanished under its lock"))?;
        let before = opportunity_to_proto(&current);
        let change = Change {
            to: &target,
            note,
            lost_reason: None,
            request_id: None,
            overrides: &Overrides::default(),
        };
        if change_status(tx, &current, &before, change, actor)
            .await?
            .is_some()
        {
            moved += 1;
        }
    }
    Ok(moved)
}
