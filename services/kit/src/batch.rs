//! Batches (R21): up to [`MAX_ITEMS`] single-call requests in one call and one transaction,
//! each under exactly the rules of its single call.
//!
//! A service decodes every item with the single call's own `TryFrom` ([`Batch::decode`]),
//! then works on the items still pending ([`Items`]): it claims their request ids in one
//! statement ([`Items::claim`], R11 per item), refuses the ones a check rejects
//! ([`Items::fail`]), writes the rest with set-based SQL, and ends with
//! [`Items::finish`]: atomic by default (any failed item fails the call, and the
//! transaction rolls back), or with `allow_partial_success` the written items and a
//! `google.rpc.Status` for each failed one.

use prost::Message;
use salesopp_proto::common::v1::BatchItemError;
use sqlx::PgConnection;

use crate::error::{ApiError, ApiResult, FieldViolation, FieldViolations};
use crate::idempotency::{self, ItemClaim, Retry};

/// Most items one batch takes.
pub const MAX_ITEMS: usize = 1000;

/// The path of a field of item `index`: `requests[3].customer.code`.
pub fn item_field(index: usize, field: &str) -> String {
    if field.is_empty() {
        format!("requests[{index}]")
    } else {
        format!("requests[{index}].{field}")
    }
}

impl ApiError {
    /// This error of a single call as the error of item `index` of a batch: field
    /// violations are named `requests[i].field`, other messages begin with `requests[i]: `.
    /// An outage or a bug stays what it is: it fails the whole batch.
    pub fn in_item(self, index: usize) -> ApiError {
        let prefix = |message: String| format!("requests[{index}]: {message}");
        match self {
            Self::InvalidArgument(violations) => Self::InvalidArgument(
                violations
                    .into_iter()
                    .map(|v| FieldViolation {
                        field: item_field(index, &v.field),
                        description: v.description,
                    })
                    .collect(),
            ),
            Self::NotFound { resource, id } => Self::NotFound { resource, id },
            Self::AlreadyExists {
                reason,
                resource,
                field,
                message,
            } => Self::AlreadyExists {
                reason,
                resource,
                field,
                message: prefix(message),
            },
            Self::FailedPrecondition {
                reason,
                subject,
                description,
            } => Self::FailedPrecondition {
                reason,
                subject,
                description: prefix(description),
            },
            Self::Aborted { reason, message } => Self::Aborted {
                reason,
                message: prefix(message),
            },
            Self::PermissionDenied { reason, message } => Self::PermissionDenied {
                reason,
                message: prefix(message),
            },
            Self::Unauthenticated { reason, message } => Self::Unauthenticated {
                reason,
                message: prefix(message),
            },
            other @ (Self::Unavailable(_) | Self::Internal(_)) => other,
        }
    }

    /// The `google.rpc.Status` this error answers with, details included (what a client of
    /// the single call would read from the `grpc-status-details-bin` trailer).
    pub fn into_rpc_status(self) -> tonic_types::pb::Status {
        let status = tonic::Status::from(self);
        tonic_types::pb::Status::decode(status.details()).unwrap_or_else(|_| {
            tonic_types::pb::Status {
                code: status.code() as i32,
                message: status.message().to_owned(),
                details: Vec::new(),
            }
        })
    }
}

/// A decoded batch: each item's input or why it cannot be decoded, and the batch's own
/// retry key (its `request_id`, R11 for the whole response).
pub struct Batch<In> {
    pub items: Vec<Result<In, ApiError>>,
    pub allow_partial_success: bool,
    pub retry: Retry,
}

impl<In> Batch<In> {
    /// Decodes `requests` with the single call's `TryFrom`; `whole` is the batch request
    /// (its hash keys the batch's `request_id`). The batch itself is refused when it has no
    /// item or more than [`MAX_ITEMS`], or a malformed `request_id`. A malformed item is a
    /// failed one: the service still checks the others, so an atomic batch's answer names
    /// every bad item at once ([`Items::finish`]).
    pub fn decode<Req, Whole>(
        method: &'static str,
        requests: &[Req],
        allow_partial_success: bool,
        request_id: &str,
        whole: &Whole,
    ) -> ApiResult<Self>
    where
        In: for<'r> TryFrom<&'r Req, Error = ApiError>,
        Whole: Message,
    {
        let mut violations = FieldViolations::new();
        let request_id = idempotency::request_id(&mut violations, "request_id", request_id);
        if requests.is_empty() {
            violations.add("requests", "at least one request is required");
        } else if requests.len() > MAX_ITEMS {
            violations.add(
                "requests",
                format!(
                    "at most {MAX_ITEMS} requests per batch, got {}: split it",
                    requests.len()
                ),
            );
        }
        violations.into_result()?;
        let items: Vec<Result<In, ApiError>> = requests
            .iter()
            .enumerate()
            .map(|(index, request)| In::try_from(request).map_err(|e| e.in_item(index)))
            .collect();
        Ok(Self {
            items,
            allow_partial_success,
            retry: Retry::of(method, request_id, whole),
        })
    }
}

/// `claimed`: the item's request id, once this batch claimed it (R11).
enum Slot<In, Out> {
    Pending {
        input: In,
        claimed: Option<Retry>,
    },
    Done {
        output: Out,
        claimed: Option<Retry>,
    },
    Failed {
        error: ApiError,
        claimed: Option<Retry>,
    },
}

/// The items of a batch as a service works through them: each pending, done (with the
/// answer its single call would give) or failed.
pub struct Items<In, Out> {
    slots: Vec<Slot<In, Out>>,
    allow_partial_success: bool,
}

impl<In, Out> Items<In, Out>
where
    Out: Message + Default + Clone,
{
    pub fn new(batch: Batch<In>) -> Self {
        let slots = batch
            .items
            .into_iter()
            .map(|item| match item {
                Ok(input) => Slot::Pending {
                    input,
                    claimed: None,
                },
                Err(error) => Slot::Failed {
                    error,
                    claimed: None,
                },
            })
            .collect();
        Self {
            slots,
            allow_partial_success: batch.allow_partial_success,
        }
    }

    /// The items still pending, with their index.
    pub fn pending(&self) -> impl Iterator<Item = (usize, &In)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Pending { input, .. } => Some((i, input)),
            _ => None,
        })
    }

    /// The input of pending item `index`.
    ///
    /// # Panics
    /// When the item is not pending (a bug of the caller).
    pub fn input(&self, index: usize) -> &In {
        match &self.slots[index] {
            Slot::Pending { input, .. } => input,
            _ => panic!("batch item {index} is not pending"),
        }
    }

    /// Whether the batch is atomic and an item has failed: once every item is checked, the
    /// service writes nothing and goes straight to [`Items::finish`], which answers the
    /// failures (the transaction rolls back).
    pub fn atomic_failed(&self) -> bool {
        !self.allow_partial_success
            && self
                .slots
                .iter()
                .any(|slot| matches!(slot, Slot::Failed { .. }))
    }

    /// [`Items::finish`] for an [`Items::atomic_failed`] batch: its error.
    pub fn atomic_failure(self) -> ApiError {
        let failures = self
            .slots
            .into_iter()
            .enumerate()
            .filter_map(|(index, slot)| match slot {
                Slot::Failed { error, .. } => Some((index, error)),
                _ => None,
            })
            .collect();
        atomic_failure(failures)
    }

    /// Refuses pending item `index` with the single call's `error` (named for the item
    /// here); an item already failed or done keeps what it has.
    pub fn fail(&mut self, index: usize, error: ApiError) {
        let slot = &mut self.slots[index];
        if let Slot::Pending { claimed, .. } = slot {
            *slot = Slot::Failed {
                error: error.in_item(index),
                claimed: claimed.take(),
            };
        }
    }

    /// Pending item `index` is written: `output` is its single call's answer.
    pub fn done(&mut self, index: usize, output: Out) {
        let slot = &mut self.slots[index];
        if let Slot::Pending { claimed, .. } = slot {
            *slot = Slot::Done {
                output,
                claimed: claimed.take(),
            };
        }
    }

    /// R11 per item: claims the request ids of the pending items in one statement. An
    /// item whose id answered before is done with that first answer (nothing is written
    /// for it again); one whose id came with a different request is refused. Two pending
    /// items with the same id: the second is refused.
    pub async fn claim(
        &mut self,
        tx: &mut PgConnection,
        caller: &str,
        retry_of: impl Fn(&In) -> &Retry,
    ) -> ApiResult<()> {
        let mut seen = std::collections::HashMap::new();
        let mut duplicates = Vec::new();
        let mut keyed: Vec<(usize, Retry)> = Vec::new();
        for (index, input) in self.pending() {
            let retry = retry_of(input);
            let Some(request_id) = retry.request_id() else {
                continue;
            };
            match seen.entry(request_id.to_owned()) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    duplicates.push((index, *first.get()))
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(index);
                    keyed.push((index, retry.clone()));
                }
            }
        }
        for (index, first) in duplicates {
            self.fail(
                index,
                ApiError::invalid(
                    "request_id",
                    format!("the same request_id as requests[{first}]: each item needs its own"),
                ),
            );
        }
        let retries: Vec<&Retry> = keyed.iter().map(|(_, retry)| retry).collect();
        let claims = idempotency::claim_items::<Out>(tx, caller, &retries).await?;
        for ((index, retry), claim) in keyed.into_iter().zip(claims) {
            match claim {
                ItemClaim::New => {
                    if let Slot::Pending { claimed, .. } = &mut self.slots[index] {
                        *claimed = Some(retry);
                    }
                }
                ItemClaim::Replay(first) => self.done(index, first),
                ItemClaim::Refused(error) => self.fail(index, error),
            }
        }
        Ok(())
    }

    /// Ends the batch: stores each written item's answer for its retries and gives the
    /// answers in request order with the failures. Atomic (no `allow_partial_success`): any
    /// failed item is the call's error: all their field violations when every failure is
    /// bad input, else the first other failure; the caller's transaction then rolls back.
    /// With partial success, the claims of failed items are released, so a retry of one
    /// tries it again.
    pub async fn finish(
        self,
        tx: &mut PgConnection,
        caller: &str,
    ) -> ApiResult<(Vec<Out>, Vec<BatchItemError>)> {
        let mut written: Vec<(Retry, Out)> = Vec::new();
        let mut released: Vec<Retry> = Vec::new();
        let mut outputs = Vec::with_capacity(self.slots.len());
        let mut failures = Vec::new();
        for (index, slot) in self.slots.into_iter().enumerate() {
            match slot {
                Slot::Pending { .. } => {
                    return Err(ApiError::internal(format!(
                        "batch item {index} was neither written nor refused"
                    )));
                }
                Slot::Done { output, claimed } => {
                    if let Some(retry) = claimed {
                        written.push((retry, output.clone()));
                    }
                    outputs.push(output);
                }
                Slot::Failed { error, claimed } => {
                    if let Some(retry) = claimed {
                        released.push(retry);
                    }
                    outputs.push(Out::default());
                    failures.push((index, error));
                }
            }
        }
        if !failures.is_empty() && !self.allow_partial_success {
            return Err(atomic_failure(failures));
        }
        idempotency::complete_items(tx, caller, &written).await?;
        idempotency::release_items(tx, caller, &released).await?;
        let errors = failures
            .into_iter()
            .map(|(index, error)| BatchItemError {
                index: index as i32,
                status: Some(error.into_rpc_status()),
            })
            .collect();
        Ok((outputs, errors))
    }
}

/// The one error of an atomic batch with failed items: every field violation when all
/// failures are bad input, else the first failure that is not.
fn atomic_failure(failures: Vec<(usize, ApiError)>) -> ApiError {
    if failures.is_empty() {
        return ApiError::internal("an atomic batch failed without a failed item");
    }
    if failures
        .iter()
        .all(|(_, error)| matches!(error, ApiError::InvalidArgument(_)))
    {
        return ApiError::InvalidArgument(
            failures
                .into_iter()
                .flat_map(|(_, error)| error.field_violations().to_vec())
                .collect(),
        );
    }
    failures
        .into_iter()
        .map(|(_, error)| error)
        .find(|error| !matches!(error, ApiError::InvalidArgument(_)))
        .expect("a failure that is not bad input")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reason;

    #[test]
    fn item_errors_name_the_item() {
        let error = ApiError::invalid("customer.code", "bad").in_item(3);
        assert_eq!(
            error.field_violations()[0].field,
            "requests[3].customer.code"
        );
        let error = ApiError::out_of_scope("not yours").in_item(7);
        assert_eq!(error.to_string(), "requests[7]: not yours");
    }

    #[test]
    fn an_atomic_batch_answers_every_violation_or_the_first_other_failure() {
        let only_bad_input = atomic_failure(vec![
            (1, ApiError::invalid("a", "x").in_item(1)),
            (4, ApiError::invalid("b", "y").in_item(4)),
        ]);
        let fields: Vec<_> = only_bad_input
            .field_violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["requests[1].a", "requests[4].b"]);
        let mixed = atomic_failure(vec![
            (1, ApiError::invalid("a", "x").in_item(1)),
            (
                2,
                ApiError::failed_precondition(Reason::CustomerArchived, "c", "archived").in_item(2),
            ),
        ]);
        assert_eq!(mixed.reason(), Reason::CustomerArchived);
    }

    #[test]
    fn an_item_error_becomes_the_rpc_status_the_single_call_answers() {
        let status = ApiError::invalid("customer.code", "bad")
            .in_item(2)
            .into_rpc_status();
        assert_eq!(status.code, tonic::Code::InvalidArgument as i32);
        assert!(status.message.contains("requests[2].customer.code"));
        assert!(!status.details.is_empty(), "BadRequest and ErrorInfo");
    }
}
