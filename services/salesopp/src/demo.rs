//! `salesopp demo`: plays the seed's story against a running suite through its public calls.
//! A salesperson records a customer, opens an opportunity in the default status and moves it
//! through Sent email, Quotation and Considering and comparing to Closed won; then their
//! manager looks at the salesperson's pipeline and at the opportunity with its history.

use std::fmt::Write as _;

use salesopp_kit::auth::{TokenRequest, mint_hs256};
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

/// Who plays the story.
const REP: (&str, &str) = ("somchai", "Somchai Jaidee");
const MANAGER: (&str, &str) = ("malee", "Malee Srisuk");
const TEAM: &str = "bangkok-north";

fn token(secret: &str, (sub, name): (&str, &str), role: &str) -> anyhow::Result<String> {
    mint_hs256(
        secret.as_bytes(),
        &TokenRequest {
            sub: sub.to_owned(),
            name: name.to_owned(),
            team: TEAM.to_owned(),
            roles: vec![role.to_owned()],
            ttl_seconds: 600,
            issuer: None,
            audience: None,
        },
    )
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

/// Plays the story against the suite at `url`, writing what happens to the returned text.
pub async fn run(url: &str, secret: &str) -> anyhow::Result<String> {
    let channel = Channel::from_shared(url.to_owned())?.connect().await?;
    let rep = token(secret, REP, "sales_rep")?;
    let manager = token(secret, MANAGER, "sales_manager")?;
    let mut customers = CustomerServiceClient::new(channel.clone());
    let mut opportunities = OpportunityServiceClient::new(channel.clone());
    let mut statuses = StatusConfigServiceClient::new(channel.clone());
    let mut gateway = GatewayServiceClient::new(channel);
    let run_id = uuid::Uuid::new_v4();
    let mut out = String::new();

    let pipeline = statuses
        .list_statuses(authed(&rep, statusconfig::ListStatusesRequest::default())?)
        .await?
        .into_inner()
        .statuses;
    let by_name = |name: &str| {
        pipeline
            .iter()
            .find(|s| s.display_name == name)
            .ok_or_else(|| anyhow::anyhow!("the pipeline has no status named {name:?}"))
    };
    // The manager signs in once, so the directory knows them too.
    opportunities
        .list_salespeople(authed(
            &manager,
            opportunity::ListSalespeopleRequest::default(),
        )?)
        .await?;

    writeln!(out, "1. {} records the customer who got in touch.", REP.1)?;
    let customer = customers
        .create_customer(authed(
            &rep,
            customer::CreateCustomerRequest {
                customer: Some(customer::Customer {
                    display_name: "บริษัท สยามพาณิชย์ จำกัด".to_owned(),
                    contact_name: "คุณวิภา ทองดี".to_owned(),
                    phone: "081-234-5678".to_owned(),
                    email: "wipa@siam-panich.co.th".to_owned(),
                    ..Default::default()
                }),
                request_id: format!("demo-{run_id}-customer"),
            },
        )?)
        .await?
        .into_inner();
    writeln!(
        out,
        "   {} (phone {}, contact {})",
        customer.display_name, customer.phone, customer.contact_name
    )?;

    writeln!(
        out,
        "2. {} opens a sales opportunity; it starts in the default status.",
        REP.1
    )?;
    let created = opportunities
        .create_opportunity(authed(
            &rep,
            opportunity::CreateOpportunityRequest {
                opportunity: Some(opportunity::Opportunity {
                    customer_id: customer.id.clone(),
                    title: "ระบบ ERP สำหรับคลังสินค้า (warehouse ERP)".to_owned(),
                    amount: Some(Money {
                        currency_code: "THB".to_owned(),
                        units: 1_250_000,
                        nanos: 0,
                    }),
                    next_step: "Call back next week".to_owned(),
                    ..Default::default()
                }),
                request_id: format!("demo-{run_id}-opportunity"),
                note: "Customer called about a warehouse system".to_owned(),
            },
        )?)
        .await?
        .into_inner();
    writeln!(
        out,
        "   \"{}\" for {}: {} ({}%)",
        created.title,
        baht(created.amount.as_ref()),
        created.status_name,
        created.probability
    )?;

    let steps = [
        ("Sent email", "Sent the product brochure by email"),
        ("Quotation", "Customer asked for a quotation"),
        (
            "Considering and comparing",
            "Customer is comparing with another vendor",
        ),
        ("Closed won", "Purchase order received"),
    ];
    writeln!(out, "3. {} updates the status as the sale moves on.", REP.1)?;
    for (index, (name, note)) in steps.iter().enumerate() {
        let status = by_name(name)?;
        let changed = opportunities
            .change_opportunity_status(authed(
                &rep,
                opportunity::ChangeOpportunityStatusRequest {
                    opportunity_id: created.id.clone(),
                    status_id: status.id.clone(),
                    note: (*note).to_owned(),
                    request_id: format!("demo-{run_id}-step-{index}"),
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        let now = changed.opportunity.unwrap_or_default();
        writeln!(
            out,
            "   -> {:<34} {:>3}%  {}",
            thai_and_english(status),
            now.probability,
            note
        )?;
    }

    writeln!(
        out,
        "4. {} (manager, {TEAM}) looks at {}'s pipeline without asking.",
        MANAGER.1, REP.1
    )?;
    let board = gateway
        .get_salesperson_pipeline(authed(
            &manager,
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
            out,
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
            writeln!(out, "      * {} / {}", item.customer_display_name, o.title)?;
        }
    }

    writeln!(
        out,
        "5. The opportunity with its status history, as the detail screen shows it."
    )?;
    let detail = gateway
        .get_opportunity_with_history(authed(
            &manager,
            gateway::GetOpportunityWithHistoryRequest {
                opportunity_id: created.id.clone(),
                history_page_size: 0,
            },
        )?)
        .await?
        .into_inner();
    let o = detail.opportunity.unwrap_or_default();
    let current = detail.current_status.unwrap_or_default();
    writeln!(
        out,
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
    writeln!(out, "   {}", stage_bar.join(" > "))?;
    for entry in &detail.status_history {
        let from = entry
            .from_status
            .as_ref()
            .map_or("(created)".to_owned(), |s| {
                format!("{} {}%", s.display_name, s.probability)
            });
        let to = entry.to_status.clone().unwrap_or_default();
        writeln!(
            out,
            "   {:<32} -> {:<30} by {:<15} after {:<10} {}",
            from,
            format!("{} {}%", to.display_name, to.probability),
            entry.changed_by.clone().unwrap_or_default().display_name,
            duration(entry.time_in_previous_status.as_ref()),
            entry.note
        )?;
    }
    Ok(out)
}
