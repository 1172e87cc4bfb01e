//! The workloads: N tasks calling the suite over real gRPC (a connection each, like N
//! clients) for a warmup, then for the measured duration. Every call's latency goes into an
//! HDR histogram; failures are counted by gRPC code. Writes carry a fresh `request_id` (the
//! idempotency record is part of the work measured), and each change task moves only the
//! opportunities it alone was given, so no two tasks wait on one row: what is measured is
//! the suite's own cost, not contention the benchmark made up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use salesopp_kit::auth::TokenMinter;
use salesopp_proto::common::v1 as common;
use salesopp_proto::customer::v1 as customer_pb;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::gateway::v1 as gateway_pb;
use salesopp_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use sqlx::PgPool;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::scheme::{self, Status};

/// What a benchmark run can drive.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// ChangeOpportunityStatus by one caller (an admin service account, like an ERP).
    ChangeStatus,
    /// ChangeOpportunityStatus by distinct salespeople, each on opportunities they own.
    ChangeStatusCallers,
    /// CreateOpportunity by distinct salespeople.
    Create,
    /// GetOpportunity of random opportunities (admin).
    Get,
    /// ListOpportunities of the caller's own opportunities (first page of 50).
    ListByOwner,
    /// GetPipelineSummary of a team, as its manager.
    PipelineTeam,
    /// GetPipelineSummary of everything, as the admin.
    PipelineAdmin,
    /// ListCustomers substring search, Thai and Latin terms.
    SearchCustomers,
    /// The gateway's GetOpportunityWithHistory (admin).
    GatewayHistory,
    /// 70% reads and 30% writes by distinct salespeople, with event watchers attached.
    Mix,
    /// BatchCreateOpportunities of [`BATCH_ITEMS`] items by one caller (an ERP's import).
    BatchCreate,
    /// BatchChangeOpportunityStatus of [`BATCH_ITEMS`] items by one caller (an ERP's sync).
    BatchChangeStatus,
}

/// The items of one call of the batch workloads (R21 takes up to 1,000).
pub const BATCH_ITEMS: usize = 100;

impl Workload {
    pub const ALL: [Workload; 12] = [
        Workload::ChangeStatus,
        Workload::ChangeStatusCallers,
        Workload::Create,
        Workload::Get,
        Workload::ListByOwner,
        Workload::PipelineTeam,
        Workload::PipelineAdmin,
        Workload::SearchCustomers,
        Workload::GatewayHistory,
        Workload::Mix,
        Workload::BatchCreate,
        Workload::BatchChangeStatus,
    ];

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Workload::ChangeStatus => "change-status",
            Workload::ChangeStatusCallers => "change-status-callers",
            Workload::Create => "create",
            Workload::Get => "get",
            Workload::ListByOwner => "list-by-owner",
            Workload::PipelineTeam => "pipeline-team",
            Workload::PipelineAdmin => "pipeline-admin",
            Workload::SearchCustomers => "search-customers",
            Workload::GatewayHistory => "gateway-history",
            Workload::Mix => "mix",
            Workload::BatchCreate => "batch-create",
            Workload::BatchChangeStatus => "batch-change-status",
        }
    }

    /// The call it makes, as a reader of the report knows it.
    pub fn call(self) -> &'static str {
        match self {
            Workload::ChangeStatus => "ChangeOpportunityStatus, 1 caller",
            Workload::ChangeStatusCallers => "ChangeOpportunityStatus, distinct callers",
            Workload::Create => "CreateOpportunity",
            Workload::Get => "GetOpportunity",
            Workload::ListByOwner => "ListOpportunities by owner",
            Workload::PipelineTeam => "GetPipelineSummary, team manager",
            Workload::PipelineAdmin => "GetPipelineSummary, admin",
            Workload::SearchCustomers => "ListCustomers search (Thai, Latin)",
            Workload::GatewayHistory => "gateway GetOpportunityWithHistory",
            Workload::Mix => "mix 70% reads / 30% writes + 3 watchers",
            Workload::BatchCreate => "BatchCreateOpportunities, 100 items, 1 caller",
            Workload::BatchChangeStatus => "BatchChangeOpportunityStatus, 100 items, 1 caller",
        }
    }

    /// The opportunities one call creates or changes (or reads).
    pub fn items_per_call(self) -> usize {
        match self {
            Workload::BatchCreate | Workload::BatchChangeStatus => BATCH_ITEMS,
            _ => 1,
        }
    }
}

/// Everything the workloads need to know about the suite and its data.
#[derive(Debug, Clone)]
pub struct Context {
    pub url: String,
    pub tokens: TokenMinter,
    /// The benchmark database: where tasks find the opportunities they may change.
    pub db: PgPool,
    pub statuses: Vec<Status>,
    pub scale: u64,
    pub customers: u64,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// When the mix's writers were told their writes committed, beside what the watchers
    /// received: the lag from commit to receipt.
    pub acks: Acks,
}

/// Each write's acknowledgement (the suite answered: its transaction has committed) met
/// with each watcher's receipt of the write's event, by (opportunity, version), whichever
/// comes first: the lag from acknowledgement to receipt, 0 when the event arrived first. The
/// commit lies between the event's occur time and the acknowledgement, so the delivery lag
/// from commit lies between this lag and the one from the occur time.
#[derive(Debug, Clone, Default)]
pub struct Acks(Arc<std::sync::Mutex<AckState>>);

#[derive(Debug, Default)]
struct AckState {
    acked: HashMap<(String, i64), SystemTime>,
    /// Receipts before their acknowledgement: (watcher, opportunity, version).
    early: HashSet<(usize, String, i64)>,
    watchers: usize,
    lag: Option<Histogram<u64>>,
}

impl AckState {
    fn record(&mut self, micros: u64) {
        let _ = self.lag.get_or_insert_with(histogram).record(micros.max(1));
    }
}

impl Acks {
    fn acknowledged(&self, written: Written, at: SystemTime) {
        let Ok(mut state) = self.0.lock() else { return };
        for watcher in 0..state.watchers {
            if state.early.remove(&(watcher, written.0.clone(), written.1)) {
                state.record(0);
            }
        }
        state.acked.insert(written, at);
    }

    fn received(&self, watcher: usize, written: Written, at: SystemTime) {
        let Ok(mut state) = self.0.lock() else { return };
        match state.acked.get(&written) {
            Some(acked) => {
                let micros = at.duration_since(*acked).unwrap_or_default().as_micros();
                state.record(micros as u64);
            }
            None => {
                state.early.insert((watcher, written.0, written.1));
            }
        }
    }

    fn watching(&self, watchers: usize) {
        if let Ok(mut state) = self.0.lock() {
            *state = AckState {
                watchers,
                ..AckState::default()
            };
        }
    }

    fn lag(&self) -> Histogram<u64> {
        self.0
            .lock()
            .ok()
            .and_then(|state| state.lag.clone())
            .unwrap_or_else(histogram)
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// How quickly events reached the watchers during the mix.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Delivery {
    pub watchers: usize,
    /// Events received, summed over the watchers.
    pub events: u64,
    /// From the event's occur time (the database clock inside its transaction, before the
    /// rest of it and its commit) to its receipt by a watcher.
    pub lag: Latency,
    /// Events whose write's acknowledgement the watchers met (see [`Acks`]).
    pub acknowledged_events: u64,
    /// From the write's acknowledgement to the event's receipt (0 if it came first).
    pub lag_from_ack: Latency,
}

/// What one workload measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub workload: Workload,
    pub call: &'static str,
    pub concurrency: usize,
    pub seconds: f64,
    /// Successful calls in the measured window.
    pub calls: u64,
    pub per_second: f64,
    /// Items (opportunities created, changed or read) per call: 1 but for the batches.
    pub items_per_call: usize,
    pub latency: Latency,
    /// Failed calls in the measured window, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// The served process's peak resident set while this workload ran (KiB), when known.
    pub peak_rss_kib: Option<u64>,
    pub delivery: Option<Delivery>,
}

/// `message` with the bearer token.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse::<MetadataValue<Ascii>>() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// One task's clients, identity and state.
struct Worker {
    opportunities: OpportunityServiceClient<Channel>,
    customers: CustomerServiceClient<Channel>,
    gateway: GatewayServiceClient<Channel>,
    bearer: MetadataValue<Ascii>,
    caller_id: String,
    /// The opportunities this task alone changes (id, current status), and reads in the mix.
    owned: Vec<(Uuid, Uuid)>,
    rng: fastrand::Rng,
}

/// One call's result: success, or the code of the failure.
type Outcome = Result<(), tonic::Code>;
/// The opportunity and version a write made.
type Written = (String, i64);

fn written(opportunity: Option<pb::Opportunity>) -> Written {
    opportunity.map(|o| (o.id, o.version)).unwrap_or_default()
}

impl Worker {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request
    }

    fn random_opportunity(&mut self, scale: u64) -> String {
        scheme::opportunity_id(self.rng.u64(1..=scale)).to_string()
    }

    async fn change(&mut self, statuses: &[Status]) -> Result<Written, tonic::Code> {
        if self.owned.is_empty() {
            return Err(tonic::Code::FailedPrecondition);
        }
        let at = self.rng.usize(..self.owned.len());
        let (id, current) = self.owned[at];
        let to = scheme::next_status(statuses, current).id;
        let response = self
            .opportunities
            .change_opportunity_status(self.request(pb::ChangeOpportunityStatusRequest {
                opportunity_id: id.to_string(),
                status_id: to.to_string(),
                request_id: Uuid::new_v4().to_string(),
                ..Default::default()
            }))
            .await
            .map_err(|s| s.code())?;
        let opportunity = response.into_inner().opportunity;
        let now = opportunity
            .as_ref()
            .and_then(|o| Uuid::parse_str(&o.status_id).ok())
            .unwrap_or(to);
        self.owned[at].1 = now;
        Ok(written(opportunity))
    }

    async fn create(&mut self, customers: u64) -> Result<Written, tonic::Code> {
        let customer = scheme::customer_id(self.rng.u64(1..=customers));
        let units = self.rng.i64(1_000..5_000_000);
        self.opportunities
            .create_opportunity(self.request(pb::CreateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    customer_id: customer.to_string(),
                    title: format!("Bench deal {units}"),
                    amount: Some(common::Money {
                        currency_code: "THB".to_owned(),
                        units,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                request_id: Uuid::new_v4().to_string(),
                note: String::new(),
            }))
            .await
            .map(|response| written(Some(response.into_inner())))
            .map_err(|s| s.code())
    }

    async fn get(&mut self, id: String) -> Outcome {
        self.opportunities
            .get_opportunity(self.request(pb::GetOpportunityRequest { id }))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    async fn list_own(&mut self) -> Outcome {
        self.opportunities
            .list_opportunities(self.request(pb::ListOpportunitiesRequest {
                owner_ids: vec![self.caller_id.clone()],
                ..Default::default()
            }))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    async fn pipeline(&mut self) -> Outcome {
        self.opportunities
            .get_pipeline_summary(self.request(pb::GetPipelineSummaryRequest::default()))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    async fn search(&mut self) -> Outcome {
        let term = scheme::SEARCH_TERMS[self.rng.usize(..scheme::SEARCH_TERMS.len())];
        self.customers
            .list_customers(self.request(customer_pb::ListCustomersRequest {
                query: term.to_owned(),
                ..Default::default()
            }))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    async fn with_history(&mut self, id: String) -> Outcome {
        self.gateway
            .get_opportunity_with_history(self.request(
                gateway_pb::GetOpportunityWithHistoryRequest {
                    opportunity_id: id,
                    history_page_size: 0,
                },
            ))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    /// One BatchCreateOpportunities of [`BATCH_ITEMS`] deals for random customers.
    async fn batch_create(&mut self, customers: u64) -> Outcome {
        let requests = (0..BATCH_ITEMS)
            .map(|_| {
                let units = self.rng.i64(1_000..5_000_000);
                pb::CreateOpportunityRequest {
                    opportunity: Some(pb::Opportunity {
                        customer_id: scheme::customer_id(self.rng.u64(1..=customers)).to_string(),
                        title: format!("Bench batch deal {units}"),
                        amount: Some(common::Money {
                            currency_code: "THB".to_owned(),
                            units,
                            nanos: 0,
                        }),
                        ..Default::default()
                    }),
                    request_id: Uuid::new_v4().to_string(),
                    note: String::new(),
                }
            })
            .collect();
        self.opportunities
            .batch_create_opportunities(self.request(pb::BatchCreateOpportunitiesRequest {
                requests,
                ..Default::default()
            }))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    /// One BatchChangeOpportunityStatus moving [`BATCH_ITEMS`] of this task's opportunities
    /// (a run of them from a random place) each to its next status.
    async fn batch_change(&mut self, statuses: &[Status]) -> Outcome {
        if self.owned.is_empty() {
            return Err(tonic::Code::FailedPrecondition);
        }
        let start = self.rng.usize(..self.owned.len());
        let picked: Vec<usize> = (0..BATCH_ITEMS.min(self.owned.len()))
            .map(|n| (start + n) % self.owned.len())
            .collect();
        let requests = picked
            .iter()
            .map(|&at| {
                let (id, current) = self.owned[at];
                pb::ChangeOpportunityStatusRequest {
                    opportunity_id: id.to_string(),
                    status_id: scheme::next_status(statuses, current).id.to_string(),
                    request_id: Uuid::new_v4().to_string(),
                    ..Default::default()
                }
            })
            .collect();
        let response = self
            .opportunities
            .batch_change_opportunity_status(self.request(
                pb::BatchChangeOpportunityStatusRequest {
                    requests,
                    ..Default::default()
                },
            ))
            .await
            .map_err(|s| s.code())?;
        for (at, answer) in picked.into_iter().zip(response.into_inner().responses) {
            if let Some(now) = answer
                .opportunity
                .and_then(|o| Uuid::parse_str(&o.status_id).ok())
            {
                self.owned[at].1 = now;
            }
        }
        Ok(())
    }

    fn own_opportunity(&mut self, scale: u64) -> String {
        if self.owned.is_empty() {
            return self.random_opportunity(scale);
        }
        self.owned[self.rng.usize(..self.owned.len())].0.to_string()
    }

    /// One call of `workload`.
    async fn call(&mut self, workload: Workload, context: &Context) -> Outcome {
        match workload {
            Workload::ChangeStatus | Workload::ChangeStatusCallers => {
                self.change(&context.statuses).await.map(drop)
            }
            Workload::Create => self.create(context.customers).await.map(drop),
            Workload::Get => {
                let id = self.random_opportunity(context.scale);
                self.get(id).await
            }
            Workload::ListByOwner => self.list_own().await,
            Workload::PipelineTeam | Workload::PipelineAdmin => self.pipeline().await,
            Workload::SearchCustomers => self.search().await,
            Workload::GatewayHistory => {
                let id = self.random_opportunity(context.scale);
                self.with_history(id).await
            }
            Workload::Mix => match self.rng.u32(0..100) {
                0..25 => {
                    let id = self.own_opportunity(context.scale);
                    self.get(id).await
                }
                25..45 => self.list_own().await,
                45..60 => self.search().await,
                60..70 => {
                    let id = self.own_opportunity(context.scale);
                    self.with_history(id).await
                }
                70..90 => {
                    let written = self.change(&context.statuses).await?;
                    context.acks.acknowledged(written, SystemTime::now());
                    Ok(())
                }
                _ => {
                    let written = self.create(context.customers).await?;
                    context.acks.acknowledged(written, SystemTime::now());
                    Ok(())
                }
            },
            Workload::BatchCreate => self.batch_create(context.customers).await,
            Workload::BatchChangeStatus => self.batch_change(&context.statuses).await,
        }
    }
}

/// Who task `task` calls as in `workload`: a rep of its own (per-caller workloads), the
/// manager of a team (the team pipeline), else the admin: id, name, team and role.
fn caller_of(workload: Workload, task: usize) -> (String, String, String, &'static str) {
    let reps = scheme::reps();
    let team = 1 + (task as u32 % scheme::TEAMS);
    let per_caller = matches!(
        workload,
        Workload::ChangeStatusCallers
            | Workload::Create
            | Workload::ListByOwner
            | Workload::SearchCustomers
            | Workload::Mix
    );
    if per_caller {
        let rep = &reps[task % reps.len()];
        (
            rep.id.clone(),
            rep.name.clone(),
            rep.team.clone(),
            "sales_rep",
        )
    } else if workload == Workload::PipelineTeam {
        let manager = scheme::manager_of_team(team);
        (manager.id, manager.name, manager.team, "sales_manager")
    } else {
        (
            scheme::ADMIN_ID.to_owned(),
            scheme::ADMIN_NAME.to_owned(),
            String::new(),
            "sales_admin",
        )
    }
}

/// Who task `task` of `tasks` calls as in `workload`, and which opportunities it owns.
async fn worker(
    context: &Context,
    workload: Workload,
    task: usize,
    tasks: usize,
) -> anyhow::Result<Worker> {
    let reps = scheme::reps();
    let (caller_id, name, team_name, role) = caller_of(workload, task);
    let token =
        context
            .tokens
            .mint(&caller_id, &name, &team_name, &[role.to_owned()], 24 * 3600)?;
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}").parse()?;
    let owned = match workload {
        // One caller: task t changes the opportunities numbered t mod tasks (a sample).
        Workload::ChangeStatus | Workload::BatchChangeStatus => {
            let (task, tasks) = (task as u64, tasks as u64);
            let numbered = context.scale.saturating_sub(task).div_ceil(tasks);
            let mut rng = fastrand::Rng::with_seed(task);
            let mut ids: Vec<Uuid> = (0..numbered.min(2_000))
                .map(|_| scheme::opportunity_id(1 + task + tasks * rng.u64(0..numbered)))
                .collect();
            ids.sort();
            ids.dedup();
            current_statuses(&context.db, &ids).await?
        }
        // Per caller: the caller's own, split between the tasks that share the caller.
        Workload::ChangeStatusCallers | Workload::Mix => {
            let sharing = tasks.div_ceil(reps.len()).max(1);
            let slot = task / reps.len();
            let all = sqlx::query!(
                "select id, status_id from opportunities where owner_id = $1 order by id",
                &caller_id
            )
            .fetch_all(&context.db)
            .await?;
            all.into_iter()
                .enumerate()
                .filter(|(n, _)| n % sharing == slot)
                .map(|(_, row)| (row.id, row.status_id))
                .collect()
        }
        _ => Vec::new(),
    };
    let channel = Endpoint::from_shared(context.url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(Worker {
        opportunities: OpportunityServiceClient::new(channel.clone()),
        customers: CustomerServiceClient::new(channel.clone()),
        gateway: GatewayServiceClient::new(channel),
        bearer,
        caller_id,
        owned,
        rng: fastrand::Rng::with_seed(0x5eed ^ task as u64),
    })
}

async fn current_statuses(db: &PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query!(
        "select id, status_id from opportunities where id = any($1) order by id",
        ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id, row.status_id))
        .collect())
}

/// What one task saw in the measured window.
struct TaskResult {
    latencies: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// The measured window of a run: calls started before `measure_from` warm up, calls that
/// end after `end` are not counted.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// One task's calls, one after another until the window ends.
async fn drive_task(
    mut worker: Worker,
    workload: Workload,
    context: Arc<Context>,
    window: Window,
    done: Arc<AtomicU64>,
) -> TaskResult {
    let mut result = TaskResult {
        latencies: histogram(),
        errors: BTreeMap::new(),
    };
    loop {
        let start = Instant::now();
        if start >= window.end {
            return result;
        }
        let outcome = worker.call(workload, &context).await;
        let finished = Instant::now();
        done.fetch_add(1, Ordering::Relaxed);
        if start < window.measure_from || finished > window.end {
            continue;
        }
        match outcome {
            Ok(()) => {
                let micros = (finished - start).as_micros().max(1) as u64;
                let _ = result.latencies.record(micros);
            }
            Err(code) => *result.errors.entry(format!("{code:?}")).or_default() += 1,
        }
    }
}

/// The progress bar of a run, and a task that moves it every 200 ms and returns the peak
/// of `sample_memory` once the run ends.
fn progress(
    workload: Workload,
    started: Instant,
    end: Instant,
    done: Arc<AtomicU64>,
    sample_memory: impl Fn() -> Option<u64> + Send + Sync + 'static,
) -> (ProgressBar, tokio::task::JoinHandle<u64>) {
    let context_len = end.saturating_duration_since(started).as_secs().max(1);
    let bar = ProgressBar::new(context_len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} s {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(workload.name());
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(rss) = sample_memory() {
                    peak = peak.max(rss);
                }
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(format!("{} calls", done.load(Ordering::Relaxed)));
                if Instant::now() >= end {
                    return peak;
                }
            }
        })
    };

    (bar, ticker)
}

/// The delivery lags the watchers measured, once the run is over.
async fn delivery(watchers: Vec<Watcher>, acks: &Acks) -> anyhow::Result<Option<Delivery>> {
    if watchers.is_empty() {
        return Ok(None);
    }
    // Events committed at the very end get a moment to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut lag = histogram();
    let mut events = 0;
    let count = watchers.len();
    for watcher in watchers {
        watcher.handle.abort();
        let seen = watcher
            .lag
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram());
        events += seen.len();
        lag.add(&seen)?;
    }
    let from_ack = acks.lag();
    Ok(Some(Delivery {
        watchers: count,
        events,
        lag: Latency::of(&lag),
        acknowledged_events: from_ack.len(),
        lag_from_ack: Latency::of(&from_ack),
    }))
}

/// Runs `workload` with `context.concurrency` tasks: warmup, then the measured duration.
/// `sample_memory` is called every 200 ms while it runs and returns the server's RSS (KiB).
pub async fn run(
    context: &Arc<Context>,
    workload: Workload,
    sample_memory: impl Fn() -> Option<u64> + Send + Sync + 'static,
) -> anyhow::Result<Measured> {
    let tasks = context.concurrency.max(1);
    let mut workers = Vec::with_capacity(tasks);
    for task in 0..tasks {
        workers.push(worker(context, workload, task, tasks).await?);
    }
    let started = Instant::now();
    let measure_from = started + context.warmup;
    let end = measure_from + context.duration;
    let done = Arc::new(AtomicU64::new(0));

    let watchers = if workload == Workload::Mix {
        start_watchers(context, 3, SystemTime::now() + context.warmup).await?
    } else {
        Vec::new()
    };

    let (bar, ticker) = progress(workload, started, end, done.clone(), sample_memory);

    let window = Window { measure_from, end };
    let handles: Vec<_> = workers
        .into_iter()
        .map(|worker| {
            tokio::spawn(drive_task(
                worker,
                workload,
                context.clone(),
                window,
                done.clone(),
            ))
        })
        .collect();
    let mut latencies = histogram();
    let mut errors = BTreeMap::new();
    for handle in handles {
        let result = handle.await?;
        latencies.add(&result.latencies)?;
        for (code, count) in result.errors {
            *errors.entry(code).or_default() += count;
        }
    }
    let peak = ticker.await.unwrap_or(0);
    bar.finish_and_clear();

    let delivery = delivery(watchers, &context.acks).await?;
    let seconds = context.duration.as_secs_f64();
    Ok(Measured {
        workload,
        call: workload.call(),
        concurrency: tasks,
        seconds,
        calls: latencies.len(),
        per_second: latencies.len() as f64 / seconds.max(f64::EPSILON),
        items_per_call: workload.items_per_call(),
        latency: Latency::of(&latencies),
        errors,
        peak_rss_kib: (peak > 0).then_some(peak),
        delivery,
    })
}

/// An event watcher: its task and the lags it measured (µs).
struct Watcher {
    handle: tokio::task::JoinHandle<()>,
    lag: Arc<std::sync::Mutex<Histogram<u64>>>,
}

/// Starts `count` admin watchers at the newest event, each recording the lag of events that
/// occurred after `count_from` (the warmup's end).
async fn start_watchers(
    context: &Context,
    count: usize,
    count_from: SystemTime,
) -> anyhow::Result<Vec<Watcher>> {
    let newest =
        sqlx::query_scalar!(r#"select coalesce(max(seq), 0) as "newest!" from opportunity_events"#)
            .fetch_one(&context.db)
            .await?;
    let cursor = salesopp_outbox::cursor(newest);
    context.acks.watching(count);
    let token = context.tokens.mint(
        scheme::ADMIN_ID,
        scheme::ADMIN_NAME,
        "",
        &["sales_admin".to_owned()],
        24 * 3600,
    )?;
    let mut watchers = Vec::with_capacity(count);
    for index in 0..count {
        let client = OpportunityServiceClient::connect(context.url.clone()).await?;
        let lag = Arc::new(std::sync::Mutex::new(histogram()));
        let handle = tokio::spawn(watch(
            client,
            token.clone(),
            cursor.clone(),
            count_from,
            lag.clone(),
            (index, context.acks.clone()),
        ));
        watchers.push(Watcher { handle, lag });
    }
    Ok(watchers)
}

/// One watcher: follows WatchOpportunityEvents from `cursor` and records, for each event
/// that occurred after `count_from`, the time from its occurrence to its receipt. Kept to
/// this one function so a change of the stream's message (an `event`/`heartbeat` oneof)
/// is adapted here alone.
async fn watch(
    mut client: OpportunityServiceClient<Channel>,
    token: String,
    cursor: String,
    count_from: SystemTime,
    lag: Arc<std::sync::Mutex<Histogram<u64>>>,
    (index, acks): (usize, Acks),
) {
    let request = authed(
        &token,
        pb::WatchOpportunityEventsRequest {
            start: Some(pb::watch_opportunity_events_request::Start::AfterCursor(
                cursor,
            )),
            ..Default::default()
        },
    );
    let Ok(response) = client.watch_opportunity_events(request).await else {
        return;
    };
    let mut stream = response.into_inner();
    while let Ok(Some(message)) = stream.message().await {
        let received = SystemTime::now();
        let Some(pb::watch_opportunity_events_response::Kind::Event(event)) = message.kind else {
            continue; // a heartbeat
        };
        let Some(occurred) = event.occur_time.and_then(|t| SystemTime::try_from(t).ok()) else {
            continue;
        };
        if occurred < count_from {
            continue;
        }
        let micros = received
            .duration_since(occurred)
            .unwrap_or_default()
            .as_micros()
            .max(1) as u64;
        if let Ok(mut lag) = lag.lock() {
            let _ = lag.record(micros);
        }
        acks.received(index, (event.opportunity_id, event.version), received);
    }
}

/// `calls` calls of `workload`, one at a time, by one task (for counting statements).
pub async fn sequential(context: &Context, workload: Workload, calls: u64) -> anyhow::Result<()> {
    let mut worker = worker(context, workload, 0, 1).await?;
    for _ in 0..calls {
        let _ = worker.call(workload, context).await;
    }
    Ok(())
}
