//! `salesopp demo`: plays the seed's story against a running suite through its public calls.
//! A salesperson records a customer, opens an opportunity in the default status and moves it
//! through Sent email, Quotation and Considering and comparing to Closed won; then their
//! manager looks at the salesperson's pipeline and at the opportunity with its history.
//!
//! Played again against the same database, the demo adds nothing: it finds its customer by
//! [`CUSTOMER_CODE`], its opportunity by that customer, owner and [`OPPORTUNITY_TITLE`], and
//! the steps already taken by their request ids in the opportunity's history (every request id
//! is fixed, derived from [`STORY`]), then prints the story as recorded. A run stopped midway
//! is completed by the next one, from the step after the last one its history holds; two
//! runs at once share their writes through the request ids (R11).
//!
//! The tokens it mints carry the suite's issuer and audience ([`TokenMinter`]); the URL it
//! calls is `SALESOPP_URL`, or else `SALESOPP_LISTEN` ([`suite_url`]).

// Request literals end with `..Default::default()` even where every field is set today, so
// that fields added to the contracts need no change here.
#![allow(clippy::needless_update)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use salesopp_kit::config::AuthArgs;
use salesopp_proto::common::v1::Money;
use salesopp_proto::customer::v1 as customer;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::gateway::v1 as gateway;
use salesopp_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
use salesopp_proto::opportunity::v1 as opportunity;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_proto::statusconfig::v1 as statusconfig;
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use tonic::transport::Channel;

use crate::TokenMinter;

/// Who plays the story.
pub const REP: (&str, &str) = ("somchai", "Somchai Jaidee");
pub const MANAGER: (&str, &str) = ("malee", "Malee Srisuk");
pub const TEAM: &str = "bangkok-north";

/// The story's namespace: every request id the demo sends is `<STORY>-<step>`, the same on
/// every run, so a retried or repeated call is answered with the first one's result (R11).
pub const STORY: &str = "salesopp-demo-v1";
/// The code of the story's customer: how a later run finds it (codes are unique).
pub const CUSTOMER_CODE: &str = "SALESOPP-DEMO-1";
/// The title of the story's opportunity.
pub const OPPORTUNITY_TITLE: &str = "ระบบ ERP สำหรับคลังสินค้า (warehouse ERP)";

/// The status changes of the story, in order: (status display name, note).
const STEPS: [(&str, &str); 4] = [
    ("Sent email", "Sent the product brochure by email"),
    ("Quotation", "Customer asked for a quotation"),
    (
        "Considering and comparing",
        "Customer is comparing with another vendor",
    ),
    ("Closed won", "Purchase order received"),
];

fn request_id(part: &str) -> String {
    format!("{STORY}-{part}")
}

fn step_request_id(index: usize) -> String {
    request_id(&format!("step-{index}"))
}

/// The suite `salesopp demo` plays against: `url` when one is given (`--url`,
/// `SALESOPP_URL`), else the suite's own listen address (`SALESOPP_LISTEN`, as `serve` reads
/// it), reached on this machine as [`crate::loopback_url`] says.
pub fn suite_url(url: Option<&str>, listen: SocketAddr) -> String {
    match url.map(str::trim) {
        Some(url) if !url.is_empty() => url.to_owned(),
        _ => crate::loopback_url(listen),
    }
}

fn token(tokens: &TokenMinter, (sub, name): (&str, &str), role: &str) -> anyhow::Result<String> {
    tokens.mint(sub, name, TEAM, &[role.to_owned()], 600)
}

fn authed<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

fn thai_and_english(status: &statusconfig::OpportunityStatus) -> String {
    match status.localized_names.get("th") {
        Some(thai) if *thai != status.display_name => format!("{thai} ({})", status.display_name),
        _ => status.display_name.clone(),
    }
}

fn baht(money: Option<&Money>) -> String {
    match money {
        Some(m) if m.nanos == 0 => format!("{} {}", m.currency_code, group(m.units)),
        Some(m) => format!(
            "{} {}.{:02}",
            m.currency_code,
            group(m.units),
            m.nanos / 10_000_000
        ),
        None => "-".to_owned(),
    }
}

fn group(units: i64) -> String {
    let digits = units.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(d: Option<&prost_types::Duration>) -> String {
    match d {
        None => "-".to_owned(),
        Some(d) if d.seconds >= 86_400 => {
            format!("{}d {}h", d.seconds / 86_400, d.seconds % 86_400 / 3600)
        }
        Some(d) if d.seconds >= 3600 => format!("{}h {}m", d.seconds / 3600, d.seconds % 3600 / 60),
        Some(d) => format!("{}.{:03}s", d.seconds, d.nanos / 1_000_000),
    }
}

/// Plays the story against the suite at `url`, whose tokens are verified with the HS256
/// `secret` and no issuer or audience; see [`play`].
pub async fn run(url: &str, secret: &str) -> anyhow::Result<String> {
    let tokens = TokenMinter::new(&AuthArgs {
        auth_hs256_secret: Some(secret.to_owned()),
        ..Default::default()
    })?;
    play(url, &tokens).await
}

type Customers = CustomerServiceClient<Channel>;
type Opportunities = OpportunityServiceClient<Channel>;

/// The story's customer: found by its code, else created. `true` when this call created it.
async fn story_customer(
    customers: &mut Customers,
    rep: &str,
) -> anyhow::Result<(customer::Customer, bool)> {
    if let Some(found) = find_story_customer(customers, rep).await? {
        return Ok((found, false));
    }
    let created = customers
        .create_customer(authed(
            rep,
            customer::CreateCustomerRequest {
                customer: Some(customer::Customer {
                    code: CUSTOMER_CODE.to_owned(),
                    display_name: "บริษัท สยามพาณิชย์ จำกัด".to_owned(),
                    contact_name: "คุณวิภา ทองดี".to_owned(),
                    phone: "081-234-5678".to_owned(),
                    email: "wipa@siam-panich.co.th".to_owned(),
                    ..Default::default()
                }),
                request_id: request_id("customer"),
                ..Default::default()
            },
        )?)
        .await;
    match created {
        Ok(created) => Ok((created.into_inner(), true)),
        // Created since we looked (another run at the same time): the one that exists.
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            let found = find_story_customer(customers, rep)
                .await?
                .with_context(|| {
                    format!("customer code {CUSTOMER_CODE} is taken, yet no customer has it")
                })?;
            Ok((found, false))
        }
        Err(status) => Err(status.into()),
    }
}

async fn find_story_customer(
    customers: &mut Customers,
    rep: &str,
) -> anyhow::Result<Option<customer::Customer>> {
    let listed = customers
        .list_customers(authed(
            rep,
            customer::ListCustomersRequest {
                query: CUSTOMER_CODE.to_owned(),
                show_archived: true,
                page_size: 50,
                ..Default::default()
            },
        )?)
        .await?
        .into_inner();
    Ok(listed
        .customers
        .into_iter()
        .find(|c| c.code.eq_ignore_ascii_case(CUSTOMER_CODE)))
}

/// The story's opportunity with `customer`, when one was opened: the oldest of its title.
async fn find_story_opportunity(
    opportunities: &mut Opportunities,
    rep: &str,
    customer: &customer::Customer,
) -> anyhow::Result<Option<opportunity::Opportunity>> {
    let mut page_token = String::new();
    let mut found: Option<opportunity::Opportunity> = None;
    loop {
        let page = opportunities
            .list_opportunities(authed(
                rep,
                opportunity::ListOpportunitiesRequest {
                    customer_id: customer.id.clone(),
                    owner_ids: vec![REP.0.to_owned()],
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        for candidate in page.opportunities {
            if candidate.title != OPPORTUNITY_TITLE {
                continue;
            }
            let created = |o: &opportunity::Opportunity| {
                o.create_time
                    .as_ref()
                    .map(|t| (t.seconds, t.nanos))
                    .unwrap_or_default()
            };
            // The oldest one is the story's.
            if found
                .as_ref()
                .is_none_or(|f| created(&candidate) < created(f))
            {
                found = Some(candidate);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(found)
}

/// The story's opportunity with `customer`: found, else opened. `true` when this call
/// opened it.
async fn story_opportunity(
    opportunities: &mut Opportunities,
    rep: &str,
    customer: &customer::Customer,
) -> anyhow::Result<(opportunity::Opportunity, bool)> {
    let found = find_story_opportunity(opportunities, rep, customer).await?;
    if let Some(found) = found {
        return Ok((found, false));
    }
    anyhow::ensure!(
        !customer.archived,
        "the demo's customer ({CUSTOMER_CODE}) is archived: its story cannot be played again"
    );
    let created = opportunities
        .create_opportunity(authed(
            rep,
            opportunity::CreateOpportunityRequest {
                opportunity: Some(opportunity::Opportunity {
                    customer_id: customer.id.clone(),
                    title: OPPORTUNITY_TITLE.to_owned(),
                    amount: Some(Money {
                        currency_code: "THB".to_owned(),
                        units: 1_250_000,
                        nanos: 0,
                        ..Default::default()
                    }),
                    next_step: "Call back next week".to_owned(),
                    ..Default::default()
                }),
                request_id: request_id("opportunity"),
                note: "Customer called about a warehouse system".to_owned(),
                ..Default::default()
            },
        )?)
        .await?
        .into_inner();
    Ok((created, true))
}

/// The whole status history of one opportunity, oldest first.
async fn history(
    opportunities: &mut Opportunities,
    token: &str,
    opportunity_id: &str,
) -> anyhow::Result<Vec<opportunity::StatusChange>> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = opportunities
            .list_status_history(authed(
                token,
                opportunity::ListStatusHistoryRequest {
                    opportunity_id: opportunity_id.to_owned(),
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        entries.extend(page.status_changes);
        if page.next_page_token.is_empty() {
            return Ok(entries);
        }
        page_token = page.next_page_token;
    }
}

/// Plays the story against the suite at `url` with tokens from `tokens`, writing what
/// happens to the returned text. Against a suite where the story was played already, adds
/// nothing and returns the same story (after a first line saying so); against one where it
/// was stopped midway, plays the rest.
pub async fn play(url: &str, tokens: &TokenMinter) -> anyhow::Result<String> {
    let mut story = Story::connect(url, tokens).await?;
    let pipeline = story.pipeline(url).await?;
    // The manager signs in once, so the directory knows them too.
    let manager = story.manager.clone();
    story
        .opportunities
        .list_salespeople(authed(
            &manager,
            opportunity::ListSalespeopleRequest::default(),
        )?)
        .await?;
    let customer = story.record_customer().await?;
    let (opened, recorded) = story.open_opportunity(&customer).await?;
    story.move_through(&pipeline, &opened, &recorded).await?;
    story.manager_board().await?;
    story.detail(&opened).await?;
    Ok(story.finish())
}

/// One run of the story: the suite's clients, the two people's tokens, the text so far, and
/// what the run found already recorded or recorded itself.
struct Story {
    rep: String,
    manager: String,
    customers: Customers,
    opportunities: Opportunities,
    statuses: StatusConfigServiceClient<Channel>,
    gateway: GatewayServiceClient<Channel>,
    out: String,
    found_any: bool,
    added_any: bool,
}

impl Story {
    async fn connect(url: &str, tokens: &TokenMinter) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(url.to_owned())
            .with_context(|| format!("invalid suite URL {url:?}"))?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("cannot connect to the suite at {url}"))?;
        Ok(Self {
            rep: token(tokens, REP, "sales_rep")?,
            manager: token(tokens, MANAGER, "sales_manager")?,
            customers: CustomerServiceClient::new(channel.clone()),
            opportunities: OpportunityServiceClient::new(channel.clone()),
            statuses: StatusConfigServiceClient::new(channel.clone()),
            gateway: GatewayServiceClient::new(channel),
            out: String::new(),
            found_any: false,
            added_any: false,
        })
    }

    /// Counts one step as found already recorded, or recorded now.
    fn saw(&mut self, created: bool) {
        self.found_any |= !created;
        self.added_any |= created;
    }

    /// The statuses, in pipeline order; a refused token is explained.
    async fn pipeline(
        &mut self,
        url: &str,
    ) -> anyhow::Result<Vec<statusconfig::OpportunityStatus>> {
        Ok(self
            .statuses
            .list_statuses(authed(&self.rep, statusconfig::ListStatusesRequest::default())?)
            .await
            .map_err(|status| {
                let hint = if status.code() == tonic::Code::Unauthenticated {
                    format!(
                        "the suite at {url} refused the demo's token: give the demo the suite's \
                         SALESOPP_AUTH_HS256_SECRET, SALESOPP_AUTH_ISSUER and SALESOPP_AUTH_AUDIENCE"
                    )
                } else {
                    format!("the suite at {url} did not list its statuses")
                };
                anyhow::Error::new(status).context(hint)
            })?
            .into_inner()
            .statuses)
    }

    /// 1. The customer who got in touch.
    async fn record_customer(&mut self) -> anyhow::Result<customer::Customer> {
        writeln!(
            self.out,
            "1. {} records the customer who got in touch.",
            REP.1
        )?;
        let (customer, created) = story_customer(&mut self.customers, &self.rep).await?;
        self.saw(created);
        writeln!(
            self.out,
            "   {} (phone {}, contact {})",
            customer.display_name, customer.phone, customer.contact_name
        )?;
        Ok(customer)
    }

    /// 2. The opportunity, in the default status; with its history so far.
    async fn open_opportunity(
        &mut self,
        customer: &customer::Customer,
    ) -> anyhow::Result<(opportunity::Opportunity, Vec<opportunity::StatusChange>)> {
        writeln!(
            self.out,
            "2. {} opens a sales opportunity; it starts in the default status.",
            REP.1
        )?;
        let (opened, created) =
            story_opportunity(&mut self.opportunities, &self.rep, customer).await?;
        self.saw(created);
        let recorded = history(&mut self.opportunities, &self.rep, &opened.id).await?;
        // The status it was opened in: its first history entry (R9), on every run.
        let first = recorded
            .first()
            .and_then(|entry| entry.to_status.clone())
            .unwrap_or_default();
        writeln!(
            self.out,
            "   \"{}\" for {}: {} ({}%)",
            opened.title,
            baht(opened.amount.as_ref()),
            first.display_name,
            first.probability
        )?;
        Ok((opened, recorded))
    }

    /// 3. The status moves as the sale goes on, resuming after the last step recorded.
    async fn move_through(
        &mut self,
        pipeline: &[statusconfig::OpportunityStatus],
        opened: &opportunity::Opportunity,
        recorded: &[opportunity::StatusChange],
    ) -> anyhow::Result<()> {
        writeln!(
            self.out,
            "3. {} updates the status as the sale moves on.",
            REP.1
        )?;
        let taken = |index: usize| {
            let id = step_request_id(index);
            recorded.iter().find(|entry| entry.request_id == id)
        };
        let resume_at = (0..STEPS.len())
            .rev()
            .find(|&index| taken(index).is_some())
            .map_or(0, |index| index + 1);
        for (index, (name, note)) in STEPS.iter().enumerate() {
            let status = pipeline
                .iter()
                .find(|s| s.display_name == *name)
                .ok_or_else(|| anyhow::anyhow!("the pipeline has no status named {name:?}"))?;
            let probability = if index < resume_at {
                self.found_any = true;
                taken(index)
                    .and_then(|entry| entry.to_status.as_ref())
                    .map_or(status.probability, |to| to.probability)
            } else {
                self.change_status(opened, status, note, index).await?
            };
            writeln!(
                self.out,
                "   -> {:<34} {:>3}%  {}",
                thai_and_english(status),
                probability,
                note
            )?;
        }
        Ok(())
    }

    /// One step of the story: the change, with its own request id; the new probability.
    async fn change_status(
        &mut self,
        opened: &opportunity::Opportunity,
        status: &statusconfig::OpportunityStatus,
        note: &str,
        index: usize,
    ) -> anyhow::Result<i32> {
        let changed = self
            .opportunities
            .change_opportunity_status(authed(
                &self.rep,
                opportunity::ChangeOpportunityStatusRequest {
                    opportunity_id: opened.id.clone(),
                    status_id: status.id.clone(),
                    note: note.to_owned(),
                    request_id: step_request_id(index),
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        self.added_any |= changed.status_change.is_some();
        Ok(changed.opportunity.unwrap_or_default().probability)
    }

    /// 4. The manager's view of the rep's pipeline, through the gateway.
    async fn manager_board(&mut self) -> anyhow::Result<()> {
        writeln!(
            self.out,
            "4. {} (manager, {TEAM}) looks at {}'s pipeline without asking.",
            MANAGER.1, REP.1
        )?;
        let board = self
            .gateway
            .get_salesperson_pipeline(authed(
                &self.manager,
                gateway::GetSalespersonPipelineRequest {
                    salesperson_id: REP.0.to_owned(),
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        for stage in &board.stages {
            let status = stage.status.clone().unwrap_or_default();
            let totals: Vec<String> = stage
                .totals
                .iter()
                .map(|t| {
                    format!(
                        "{} x{} (weighted {})",
                        baht(t.total_amount.as_ref()),
                        t.count,
                        baht(t.weighted_amount.as_ref())
                    )
                })
                .collect();
            writeln!(
                self.out,
                "   {:<40} {:>3}%  {}",
                thai_and_english(&status),
                status.probability,
                if totals.is_empty() {
                    "-".to_owned()
                } else {
                    totals.join(", ")
                }
            )?;
            for item in &stage.opportunities {
                let o = item.opportunity.clone().unwrap_or_default();
                writeln!(
                    self.out,
                    "      * {} / {}",
                    item.customer_display_name, o.title
                )?;
            }
        }
        Ok(())
    }

    /// 5. The detail screen: the opportunity, where it stands, and its history.
    async fn detail(&mut self, opened: &opportunity::Opportunity) -> anyhow::Result<()> {
        writeln!(
            self.out,
            "5. The opportunity with its status history, as the detail screen shows it."
        )?;
        let detail = self
            .gateway
            .get_opportunity_with_history(authed(
                &self.manager,
                gateway::GetOpportunityWithHistoryRequest {
                    opportunity_id: opened.id.clone(),
                    history_page_size: 0,
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        let o = detail.opportunity.unwrap_or_default();
        let current = detail.current_status.unwrap_or_default();
        writeln!(
            self.out,
            "   {} / {}: {} ({}%), closed: {}",
            detail.customer.unwrap_or_default().display_name,
            o.title,
            thai_and_english(&current),
            o.probability,
            if o.close_time.is_some() { "yes" } else { "no" }
        )?;
        let stage_bar: Vec<String> = detail
            .pipeline_statuses
            .iter()
            .map(|s| {
                if s.id == current.id {
                    format!("[{}]", s.display_name)
                } else {
                    s.display_name.clone()
                }
            })
            .collect();
        writeln!(self.out, "   {}", stage_bar.join(" > "))?;
        for entry in &detail.status_history {
            self.history_line(entry)?;
        }
        Ok(())
    }

    fn history_line(&mut self, entry: &opportunity::StatusChange) -> anyhow::Result<()> {
        let from = entry
            .from_status
            .as_ref()
            .map_or("(created)".to_owned(), |s| {
                format!("{} {}%", s.display_name, s.probability)
            });
        let to = entry.to_status.clone().unwrap_or_default();
        writeln!(
            self.out,
            "   {:<32} -> {:<30} by {:<15} after {:<10} {}",
            from,
            format!("{} {}%", to.display_name, to.probability),
            entry.changed_by.clone().unwrap_or_default().display_name,
            duration(entry.time_in_previous_status.as_ref()),
            entry.note
        )?;
        Ok(())
    }

    /// The text, after a first line when the story was (partly) played before.
    fn finish(self) -> String {
        let preface = match (self.found_any, self.added_any) {
            (true, false) => format!(
                "(The story was already played against this suite (customer {CUSTOMER_CODE}): \
                 nothing added, shown as recorded.)\n"
            ),
            (true, true) => format!(
                "(The story was partly played against this suite (customer {CUSTOMER_CODE}): \
                 the rest was played now.)\n"
            ),
            _ => String::new(),
        };
        preface + &self.out
    }
}
