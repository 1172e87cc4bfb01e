//! Faults of the database under load, end to end: the suite served on a Postgres cluster of
//! the test's own (`salesopp_tests::cluster::PgCluster`), restarted twice while sixteen
//! writers change statuses, create and update opportunities: once `fast` (every session is
//! terminated, SQLSTATE 57P01) and once `immediate` (a crash, then crash recovery).
//!
//! What it proves:
//! - every failed call answers a code a client may retry on (`UNAVAILABLE`, `ABORTED`,
//!   `DEADLINE_EXCEEDED`), never `INTERNAL` or `UNKNOWN`, and every `UNAVAILABLE` says when
//!   to retry (`google.rpc.RetryInfo`);
//! - nothing acknowledged is lost: every status change answered with its history entry is in
//!   `status_changes`, every created opportunity exists, and every acknowledged write has its
//!   outbox event (written in the same transaction);
//! - no request is applied twice, and each opportunity's history chain is unbroken (sequences
//!   1..n, each entry starting where the one before it ended, the last one where the
//!   opportunity is);
//! - the suite recovers by itself: after the restarts a call succeeds again.
//!
//! Nothing is ordered by sleeping: the restarts start once enough calls have succeeded
//! (counted by the writers), and every wait is guarded by a generous `PATIENCE`. No timing is
//! asserted.

// Every request message literal ends with `..Default::default()`, whether or not it names
// every field today: fields are being added to the contracts.
#![allow(clippy::needless_update)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prost_types::FieldMask;
use salesopp_proto::common::v1::Money;
use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_tests::cluster::{PgCluster, StopMode};
use salesopp_tests::fixtures::{WON, rid};
use salesopp_tests::{SuiteOptions, TestDatabase, TestSuite, authed, rep_token};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use uuid::Uuid;

type Opps = OpportunityServiceClient<Channel>;

/// Guards every wait against a hang; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);
/// The deadline (`grpc-timeout`) of every call.
const CALL_DEADLINE: Duration = Duration::from_secs(4);

const WRITERS: usize = 16;
const CALLS_PER_WRITER: usize = 150;
const OPPORTUNITIES: usize = 20;
/// Successes before the first restart, and again after each restart before the next.
const SUCCESSES_BETWEEN_RESTARTS: u64 = 200;

/// The shipped OPEN statuses (R2), between which the writers move the opportunities.
const OPEN_STATUSES: [&str; 5] = [
    "00000000-0000-4000-8000-000000000001", // Interested
    "00000000-0000-4000-8000-000000000002", // Presented
    "00000000-0000-4000-8000-000000000003", // Sent email
    "00000000-0000-4000-8000-000000000004", // Quotation
    "00000000-0000-4000-8000-000000000005", // Considering and comparing
];

/// The codes a failed call may answer while its database restarts: each tells the client
/// that a retry (with the same `request_id`) is the thing to do.
const RETRYABLE: [Code; 3] = [Code::Unavailable, Code::Aborted, Code::DeadlineExceeded];

// ---------------------------------------------------------------------------------------
// What the writers record
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Method {
    ChangeOpportunityStatus,
    CreateOpportunity,
    UpdateOpportunity,
}

/// Where the run is, as the writers see it when a call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Phase {
    WarmUp,
    FastRestart,
    AfterFastRestart,
    ImmediateRestart,
    AfterImmediateRestart,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    phase: Phase,
    successes: u64,
    writers_done: usize,
}

/// An answered write, and what it promised.
#[derive(Debug, Clone)]
enum Ack {
    Changed {
        change_id: Uuid,
        opportunity_id: Uuid,
        to_status_id: Uuid,
        request_id: String,
    },
    /// The opportunity was already in that status: nothing recorded (R8).
    Unchanged,
    Created {
        opportunity_id: Uuid,
        request_id: String,
    },
    Updated {
        request_id: String,
    },
}

#[derive(Debug, Clone)]
struct Failure {
    method: Method,
    phase: Phase,
    /// The code as tonic gave it.
    raw: Code,
    /// The code in gRPC's terms (see [`grpc_code`]).
    code: Code,
    message: String,
    retry_info: bool,
}

#[derive(Debug, Default)]
struct WriterLog {
    calls: usize,
    acks: Vec<(Method, Ack)>,
    failures: Vec<Failure>,
}

/// tonic reports a call that outlived its `grpc-timeout` as `CANCELLED` "Timeout expired" (its
/// `TimeoutExpired` error, on the client's side and on the server's alike): that is the
/// deadline passing, `DEADLINE_EXCEEDED` in gRPC's terms. Every other code is taken as is.
fn grpc_code(status: &Status) -> Code {
    if status.code() == Code::Cancelled && status.message() == "Timeout expired" {
        Code::DeadlineExceeded
    } else {
        status.code()
    }
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

fn uuid(id: &str) -> Uuid {
    id.parse()
        .unwrap_or_else(|e| panic!("not a UUID: {id:?}: {e}"))
}

fn thb(units: i64) -> Money {
    Money {
        currency_code: "THB".to_owned(),
        units,
        ..Default::default()
    }
}

/// `message` from the caller of `token`, with the call deadline.
fn request<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = authed(token, message);
    request.set_timeout(CALL_DEADLINE);
    request
}

/// Awaits a call; its deadline ends it, so outliving that by `PATIENCE` is a hang.
async fn answer<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(CALL_DEADLINE + PATIENCE, call)
        .await
        .expect("a call outlived its deadline by PATIENCE: the client or the suite hangs")
        .map(tonic::Response::into_inner)
}

fn create_request(
    customer_id: &str,
    title: String,
    request_id: String,
) -> pb::CreateOpportunityRequest {
    pb::CreateOpportunityRequest {
        opportunity: Some(pb::Opportunity {
            customer_id: customer_id.to_owned(),
            title,
            amount: Some(thb(100_000)),
            ..Default::default()
        }),
        request_id,
        ..Default::default()
    }
}

fn change_request(
    opportunity_id: &str,
    status_id: &str,
    request_id: String,
) -> pb::ChangeOpportunityStatusRequest {
    pb::ChangeOpportunityStatusRequest {
        opportunity_id: opportunity_id.to_owned(),
        status_id: status_id.to_owned(),
        request_id,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// The writers
// ---------------------------------------------------------------------------------------

/// One writer: `CALLS_PER_WRITER` calls, one after the other, each with its own
/// `request_id`; 8 in 10 change a status (between OPEN statuses), 1 creates an opportunity, 1
/// updates one. Counts its successes in `progress`.
async fn writer(
    index: usize,
    mut opps: Opps,
    customer_id: String,
    opportunity_ids: Arc<Vec<String>>,
    progress: Arc<watch::Sender<Progress>>,
) -> WriterLog {
    let token = rep_token();
    let mut log = WriterLog::default();
    for call in 0..CALLS_PER_WRITER {
        let opportunity_id = &opportunity_ids[(index * 3 + call) % opportunity_ids.len()];
        let request_id = rid();
        let (method, result) = match call % 10 {
            3 => {
                let title = format!("Fault drill {index}-{call}");
                let result = answer(opps.create_opportunity(request(
                    &token,
                    create_request(&customer_id, title, request_id.clone()),
                )))
                .await
                .map(|created| Ack::Created {
                    opportunity_id: uuid(&created.id),
                    request_id: request_id.clone(),
                });
                (Method::CreateOpportunity, result)
            }
            7 => {
                let message = pb::UpdateOpportunityRequest {
                    opportunity: Some(pb::Opportunity {
                        id: opportunity_id.clone(),
                        amount: Some(thb(1_000 + (index * CALLS_PER_WRITER + call) as i64)),
                        next_step: format!("Call back ({index}-{call})"),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["amount".to_owned(), "next_step".to_owned()],
                    }),
                    request_id: request_id.clone(),
                    ..Default::default()
                };
                let result = answer(opps.update_opportunity(request(&token, message)))
                    .await
                    .map(|_| Ack::Updated {
                        request_id: request_id.clone(),
                    });
                (Method::UpdateOpportunity, result)
            }
            _ => {
                let status_id = OPEN_STATUSES[(index + call) % OPEN_STATUSES.len()];
                let result = answer(opps.change_opportunity_status(request(
                    &token,
                    change_request(opportunity_id, status_id, request_id.clone()),
                )))
                .await
                .map(|response| match response.status_change {
                    Some(change) => Ack::Changed {
                        change_id: uuid(&change.id),
                        opportunity_id: uuid(&change.opportunity_id),
                        to_status_id: uuid(&change.to_status.map(|to| to.id).unwrap_or_default()),
                        request_id: request_id.clone(),
                    },
                    None => Ack::Unchanged,
                });
                (Method::ChangeOpportunityStatus, result)
            }
        };
        log.calls += 1;
        let phase = progress.borrow().phase;
        match result {
            Ok(ack) => {
                log.acks.push((method, ack));
                progress.send_modify(|p| p.successes += 1);
            }
            Err(status) => log.failures.push(Failure {
                method,
                phase,
                raw: status.code(),
                code: grpc_code(&status),
                message: status.message().to_owned(),
                retry_info: status.get_details_retry_info().is_some(),
            }),
        }
    }
    progress.send_modify(|p| p.writers_done += 1);
    log
}

/// Waits until `want` holds or every writer is done; returns the progress then.
async fn wait_for_progress(
    progress: &watch::Sender<Progress>,
    what: &str,
    want: impl Fn(&Progress) -> bool,
) -> Progress {
    let mut watching = progress.subscribe();
    let seen = tokio::time::timeout(
        PATIENCE,
        watching.wait_for(|p| want(p) || p.writers_done == WRITERS),
    )
    .await
    .unwrap_or_else(|_| panic!("waiting for {what}: no progress within PATIENCE"))
    .expect("the progress sender lives");
    *seen
}

/// The `ERROR` and `FATAL` lines of the cluster's log, without their time and pid prefix
/// (`%m [%p] `), counted by message.
fn server_errors(cluster: &PgCluster) -> BTreeMap<String, usize> {
    let log = std::fs::read_to_string(cluster.log_file()).unwrap_or_default();
    let mut errors = BTreeMap::new();
    for line in log.lines() {
        let message = line.split_once("] ").map_or(line, |(_, message)| message);
        if message.starts_with("ERROR:") || message.starts_with("FATAL:") {
            *errors.entry(message.to_owned()).or_default() += 1;
        }
    }
    errors
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_under_write_load_loses_nothing_acknowledged() {
    // Declared first, dropped last: after the suite and its database.
    let cluster = PgCluster::start_new().await;
    let database = TestDatabase::create_in(cluster.options()).await;
    let service_pool = database.pool().await;
    let suite = TestSuite::serve(database, service_pool, SuiteOptions::default()).await;
    let token = rep_token();

    // A customer and the opportunities the writers move.
    let customer_id = answer(suite.customers().await.create_customer(request(
        &token,
        cpb::CreateCustomerRequest {
            customer: Some(cpb::Customer {
                display_name: "Siam Fault Tolerance Co., Ltd.".to_owned(),
                ..Default::default()
            }),
            request_id: rid(),
            ..Default::default()
        },
    )))
    .await
    .expect("create the customer")
    .id;
    let mut opps = suite.opportunities().await;
    let mut opportunity_ids = Vec::new();
    for n in 0..OPPORTUNITIES {
        let created = answer(opps.create_opportunity(request(
            &token,
            create_request(&customer_id, format!("Fault drill base {n}"), rid()),
        )))
        .await
        .expect("create an opportunity");
        opportunity_ids.push(created.id);
    }
    let opportunity_ids = Arc::new(opportunity_ids);

    // The writers, each on its own connection.
    let progress = Arc::new(watch::Sender::new(Progress {
        phase: Phase::WarmUp,
        successes: 0,
        writers_done: 0,
    }));
    let mut writers = Vec::new();
    for index in 0..WRITERS {
        writers.push(tokio::spawn(writer(
            index,
            suite.opportunities().await,
            customer_id.clone(),
            opportunity_ids.clone(),
            progress.clone(),
        )));
    }

    // The restarts, each once enough calls have succeeded since the one before.
    let mut restarted_under_load = Vec::new();
    for (mode, during, after) in [
        (StopMode::Fast, Phase::FastRestart, Phase::AfterFastRestart),
        (
            StopMode::Immediate,
            Phase::ImmediateRestart,
            Phase::AfterImmediateRestart,
        ),
    ] {
        let since = progress.borrow().successes;
        let seen = wait_for_progress(
            &progress,
            &format!("successes before the {mode:?} restart"),
            |p| p.successes >= since + SUCCESSES_BETWEEN_RESTARTS,
        )
        .await;
        restarted_under_load.push((mode, seen.writers_done < WRITERS, seen.successes - since));
        progress.send_modify(|p| p.phase = during);
        cluster.restart(mode).await;
        progress.send_modify(|p| p.phase = after);
    }

    let mut logs = Vec::new();
    for writer in writers {
        logs.push(writer.await.expect("a writer panicked"));
    }

    // Recovery: a status change answered after the restarts, retried with one request_id so
    // that an attempt that committed unanswered is not applied twice (R11).
    let recovery_request_id = rid();
    let recovery_deadline = tokio::time::Instant::now() + PATIENCE;
    let mut recovery_attempts = Vec::new();
    let recovered = loop {
        let attempt = answer(opps.change_opportunity_status(request(
            &token,
            change_request(&opportunity_ids[0], WON, recovery_request_id.clone()),
        )))
        .await;
        match attempt {
            Ok(response) => break Some(response),
            Err(status) => {
                recovery_attempts.push((grpc_code(&status), status.message().to_owned()));
                if tokio::time::Instant::now() >= recovery_deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // -----------------------------------------------------------------------------------
    // The figures
    // -----------------------------------------------------------------------------------
    let calls: usize = logs.iter().map(|log| log.calls).sum();
    let acks: Vec<(Method, Ack)> = logs.iter().flat_map(|log| log.acks.clone()).collect();
    let failures: Vec<Failure> = logs.iter().flat_map(|log| log.failures.clone()).collect();
    let mut acks_by_method: BTreeMap<Method, usize> = BTreeMap::new();
    for (method, _) in &acks {
        *acks_by_method.entry(*method).or_default() += 1;
    }
    let unchanged = acks
        .iter()
        .filter(|(_, ack)| matches!(ack, Ack::Unchanged))
        .count();
    let mut failures_by: BTreeMap<(String, Method, Phase), usize> = BTreeMap::new();
    for failure in &failures {
        let code = if failure.raw == failure.code {
            format!("{:?}", failure.code)
        } else {
            format!("{:?} (tonic: {:?})", failure.code, failure.raw)
        };
        *failures_by
            .entry((code, failure.method, failure.phase))
            .or_default() += 1;
    }
    println!("calls made: {calls} ({WRITERS} writers x {CALLS_PER_WRITER})");
    println!(
        "acknowledged: {} ({acks_by_method:?}; {unchanged} status changes found nothing to change)",
        acks.len()
    );
    println!("failed: {}", failures.len());
    for ((code, method, phase), count) in &failures_by {
        println!("  {count:5} {code} {method:?} during {phase:?}");
    }
    for (mode, under_load, successes) in &restarted_under_load {
        println!(
            "{mode:?} restart after {successes} successes, writers still running: {under_load}"
        );
    }
    println!(
        "recovery: {} after {} failed attempts {:?}",
        if recovered.is_some() {
            "answered"
        } else {
            "NOT answered"
        },
        recovery_attempts.len(),
        recovery_attempts
    );
    println!("the server's log, its errors by message (what INTERNAL answers hide):");
    for (message, count) in server_errors(&cluster) {
        println!("  {count:5} {message}");
    }

    // -----------------------------------------------------------------------------------
    // The checks: every broken promise is collected, then all are reported at once
    // -----------------------------------------------------------------------------------
    let mut problems: Vec<String> = Vec::new();

    for (mode, under_load, _) in &restarted_under_load {
        if !under_load {
            problems.push(format!(
                "the {mode:?} restart came after the writers had finished (raise CALLS_PER_WRITER)"
            ));
        }
    }

    // 1. Failures answer codes a client retries on.
    let mut not_retryable: BTreeMap<(String, String), usize> = BTreeMap::new();
    for failure in failures.iter().filter(|f| !RETRYABLE.contains(&f.code)) {
        *not_retryable
            .entry((format!("{:?}", failure.code), failure.message.clone()))
            .or_default() += 1;
    }
    for ((code, message), count) in &not_retryable {
        problems.push(format!(
            "{count} failed calls answered {code} (not one of {RETRYABLE:?}): {message:?}"
        ));
    }

    // 2. UNAVAILABLE says when to retry.
    let unavailable: Vec<&Failure> = failures
        .iter()
        .filter(|f| f.code == Code::Unavailable)
        .collect();
    let without_retry_info: Vec<&&Failure> = unavailable.iter().filter(|f| !f.retry_info).collect();
    if let Some(first) = without_retry_info.first() {
        problems.push(format!(
            "{} of {} UNAVAILABLE answers carry no google.rpc.RetryInfo, e.g. {:?}",
            without_retry_info.len(),
            unavailable.len(),
            first.message
        ));
    }

    // 3. The recovery call.
    let mut all_acks = acks.clone();
    match &recovered {
        None => problems.push(format!(
            "no call succeeded within PATIENCE after the restarts; attempts: {recovery_attempts:?}"
        )),
        Some(response) => match &response.status_change {
            Some(change) => all_acks.push((
                Method::ChangeOpportunityStatus,
                Ack::Changed {
                    change_id: uuid(&change.id),
                    opportunity_id: uuid(&change.opportunity_id),
                    to_status_id: uuid(WON),
                    request_id: recovery_request_id.clone(),
                },
            )),
            None => problems.push(
                "the recovery call (an OPEN opportunity to WON) recorded no status change"
                    .to_owned(),
            ),
        },
    }

    // 4. Every acknowledged status change is in the history, as answered.
    let db = &suite.db;
    let changed: Vec<(Uuid, Uuid, Uuid)> = all_acks
        .iter()
        .filter_map(|(_, ack)| match ack {
            Ack::Changed {
                change_id,
                opportunity_id,
                to_status_id,
                ..
            } => Some((*change_id, *opportunity_id, *to_status_id)),
            _ => None,
        })
        .collect();
    let change_ids: Vec<Uuid> = changed.iter().map(|(id, _, _)| *id).collect();
    let stored: HashMap<Uuid, (Uuid, Uuid)> = sqlx::query_as::<_, (Uuid, Uuid, Uuid)>(
        "select id, opportunity_id, to_status_id from status_changes where id = any($1)",
    )
    .bind(&change_ids)
    .fetch_all(db)
    .await
    .expect("read the acknowledged status changes")
    .into_iter()
    .map(|(id, opportunity_id, to_status_id)| (id, (opportunity_id, to_status_id)))
    .collect();
    let mut lost_changes = Vec::new();
    for (id, opportunity_id, to_status_id) in &changed {
        match stored.get(id) {
            None => lost_changes.push(id.to_string()),
            Some(row) if *row != (*opportunity_id, *to_status_id) => problems.push(format!(
                "status change {id} was answered as {opportunity_id} -> {to_status_id}, \
                 stored as {} -> {}",
                row.0, row.1
            )),
            Some(_) => {}
        }
    }
    if !lost_changes.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged status changes are not in status_changes: {lost_changes:?}",
            lost_changes.len(),
            changed.len()
        ));
    }

    // 5. Every acknowledged create exists.
    let created: Vec<Uuid> = all_acks
        .iter()
        .filter_map(|(_, ack)| match ack {
            Ack::Created { opportunity_id, .. } => Some(*opportunity_id),
            _ => None,
        })
        .collect();
    let existing: HashSet<Uuid> =
        sqlx::query_scalar::<_, Uuid>("select id from opportunities where id = any($1)")
            .bind(&created)
            .fetch_all(db)
            .await
            .expect("read the acknowledged opportunities")
            .into_iter()
            .collect();
    let lost_creates: Vec<String> = created
        .iter()
        .filter(|id| !existing.contains(id))
        .map(Uuid::to_string)
        .collect();
    if !lost_creates.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged opportunities do not exist: {lost_creates:?}",
            lost_creates.len(),
            created.len()
        ));
    }

    // 6. Every acknowledged write has its event, committed with it (the outbox).
    let expected_events: Vec<(String, &str)> = all_acks
        .iter()
        .filter_map(|(_, ack)| match ack {
            Ack::Changed { request_id, .. } => Some((request_id.clone(), "STATUS_CHANGED")),
            Ack::Created { request_id, .. } => Some((request_id.clone(), "CREATED")),
            Ack::Updated { request_id } => Some((request_id.clone(), "UPDATED")),
            Ack::Unchanged => None,
        })
        .collect();
    let request_ids: Vec<String> = expected_events.iter().map(|(id, _)| id.clone()).collect();
    let events: HashSet<(String, String)> = sqlx::query_as::<_, (String, String)>(
        "select request_id, type from opportunity_events where request_id = any($1)",
    )
    .bind(&request_ids)
    .fetch_all(db)
    .await
    .expect("read the events of the acknowledged writes")
    .into_iter()
    .collect();
    let missing_events: Vec<String> = expected_events
        .iter()
        .filter(|(id, kind)| !events.contains(&(id.clone(), (*kind).to_owned())))
        .map(|(id, kind)| format!("{kind} {id}"))
        .collect();
    if !missing_events.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged writes have no event: {missing_events:?}",
            missing_events.len(),
            expected_events.len()
        ));
    }

    // 7. No request applied twice.
    let applied_twice: Vec<(String, i64)> = sqlx::query_as(
        "select request_id, count(*) from status_changes where request_id is not null \
         group by request_id having count(*) > 1",
    )
    .fetch_all(db)
    .await
    .expect("read the request ids of the history");
    if !applied_twice.is_empty() {
        problems.push(format!(
            "requests recorded more than once in status_changes: {applied_twice:?}"
        ));
    }

    // 8. Each opportunity's history chain is unbroken and ends where the opportunity is.
    let current: BTreeMap<Uuid, Uuid> =
        sqlx::query_as::<_, (Uuid, Uuid)>("select id, status_id from opportunities")
            .fetch_all(db)
            .await
            .expect("read the opportunities")
            .into_iter()
            .collect();
    let mut chains: BTreeMap<Uuid, Vec<(i32, Option<Uuid>, Uuid)>> = BTreeMap::new();
    for (opportunity_id, sequence, from, to) in
        sqlx::query_as::<_, (Uuid, i32, Option<Uuid>, Uuid)>(
            "select opportunity_id, sequence, from_status_id, to_status_id from status_changes \
         order by opportunity_id, sequence",
        )
        .fetch_all(db)
        .await
        .expect("read the history")
    {
        chains
            .entry(opportunity_id)
            .or_default()
            .push((sequence, from, to));
    }
    let mut entries = 0;
    for (opportunity_id, status_id) in &current {
        let chain = chains.get(opportunity_id).map(Vec::as_slice).unwrap_or(&[]);
        entries += chain.len();
        let mut previous: Option<Uuid> = None;
        for (index, (sequence, from, to)) in chain.iter().enumerate() {
            if *sequence != index as i32 + 1 || *from != previous {
                problems.push(format!(
                    "opportunity {opportunity_id}: history entry {} is sequence {sequence} \
                     from {from:?}, expected sequence {} from {previous:?}; chain: {chain:?}",
                    index + 1,
                    index + 1
                ));
                break;
            }
            previous = Some(*to);
        }
        if previous != Some(*status_id) {
            problems.push(format!(
                "opportunity {opportunity_id} is in {status_id}, its history ends in {previous:?}"
            ));
        }
    }
    println!(
        "database: {} opportunities, {entries} history entries, {} acknowledged status changes \
         checked, {} creates, {} events",
        current.len(),
        changed.len(),
        created.len(),
        expected_events.len()
    );

    assert!(
        problems.is_empty(),
        "{} broken promises after restarting the database under load:\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}
