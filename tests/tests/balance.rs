//! The gateway spreads its calls over every ready instance of each service (DESIGN,
//! Operations: "The gateway spreads its calls over every ready pod of each service, not one
//! connection to one pod"), end to end with real processes: three `salesopp serve`
//! instances on three loopback addresses (127.0.0.1, .2, .3: three pods' addresses), and a
//! gateway-only `salesopp serve --service gateway` that names them all. Which instance
//! answered is read from each instance's own `/metrics`, as Prometheus would.
//!
//! No timing is asserted: every wait polls the gateway's `salesopp_gateway_instances_ready`
//! gauge for a state, with a generous deadline that only guards against hangs.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use salesopp_proto::customer::v1 as cpb;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::gateway::v1 as gpb;
use salesopp_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_tests::fixtures::{money, rid};
use salesopp_tests::scrape::scrape;
use salesopp_tests::serve_process::{ServeCommand, ServeProcess};
use salesopp_tests::{TestDatabase, admin_token, authed, rep_token};
use tonic::Code;

/// The real command line, built by this package.
const BINARY: &str = env!("CARGO_BIN_EXE_salesopp-under-test");
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
const OPPORTUNITY_CALLS: &str = "/salesopp.opportunity.v1.OpportunityService/";
const CALLS: usize = 30;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// OpportunityService calls an instance answered OK, from its `/metrics`.
async fn opportunity_calls(instance: &ServeProcess) -> f64 {
    scrape(instance.metrics())
        .await
        .samples
        .iter()
        .filter(|s| {
            s.name == "salesopp_grpc_calls_total"
                && s.labels.get("code").map(String::as_str) == Some("OK")
                && s.labels
                    .get("method")
                    .is_some_and(|m| m.starts_with(OPPORTUNITY_CALLS))
        })
        .map(|s| s.value)
        .sum()
}

/// Waits until the gateway sends calls to exactly `ready` instances of every service.
async fn until_ready(gateway: &mut ServeProcess, ready: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        gateway.assert_running("while its instances change");
        let scrape = scrape(gateway.metrics()).await;
        let counts: Vec<_> = ["customer", "opportunity", "status-config"]
            .iter()
            .map(|service| {
                scrape.value("salesopp_gateway_instances_ready", &[("service", service)])
            })
            .collect();
        if counts.iter().all(|count| *count == Some(ready as f64)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never had {ready} ready instances of each service: {counts:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A customer and an opportunity, written through one instance.
async fn seed(instance: &ServeProcess) -> String {
    let channel = instance.connect().await.expect("connect to an instance");
    let customer = CustomerServiceClient::new(channel.clone())
        .create_customer(authed(
            &admin_token(),
            cpb::CreateCustomerRequest {
                customer: Some(cpb::Customer {
                    display_name: "บริษัท สยามวิดเจ็ต จำกัด".to_owned(),
                    ..Default::default()
                }),
                request_id: rid(),
            },
        ))
        .await
        .expect("create a customer")
        .into_inner();
    OpportunityServiceClient::new(channel)
        .create_opportunity(authed(
            &rep_token(),
            pb::CreateOpportunityRequest {
                opportunity: Some(pb::Opportunity {
                    customer_id: customer.id,
                    title: "Warehouse scanners, 3 sites".to_owned(),
                    amount: Some(money("THB", 250_000, 0)),
                    ..Default::default()
                }),
                request_id: rid(),
                note: String::new(),
            },
        ))
        .await
        .expect("create an opportunity")
        .into_inner()
        .id
}

/// `CALLS` GetOpportunityWithHistory calls through the gateway; every one must succeed.
async fn call_gateway(gateway: &ServeProcess, opportunity_id: &str) {
    let mut client = GatewayServiceClient::new(gateway.connect().await.expect("connect"));
    for n in 0..CALLS {
        let answer = client
            .get_opportunity_with_history(authed(
                &rep_token(),
                gpb::GetOpportunityWithHistoryRequest {
                    opportunity_id: opportunity_id.to_owned(),
                    history_page_size: 0,
                },
            ))
            .await
            .unwrap_or_else(|status| panic!("gateway call {n} failed: {status:?}"))
            .into_inner();
        assert_eq!(
            answer.opportunity.map(|o| o.id).as_deref(),
            Some(opportunity_id)
        );
    }
}

async fn calls_of_each(instances: &[ServeProcess]) -> Vec<f64> {
    let mut counts = Vec::new();
    for instance in instances {
        counts.push(opportunity_calls(instance).await);
    }
    counts
}

#[tokio::test]
async fn the_gateway_spreads_calls_over_every_ready_instance_and_drops_one_that_stops() {
    let database = TestDatabase::create().await;
    let commands: Vec<ServeCommand> = (1..=3)
        .map(|last| {
            ServeCommand::new(BINARY, Some(&database.url()))
                .on(loopback(last))
                .with_metrics()
                .env("SALESOPP_SHUTDOWN_GRACE_SECONDS", "10")
        })
        .collect();
    let mut instances: Vec<ServeProcess> = commands.iter().map(ServeCommand::start).collect();
    for instance in &mut instances {
        instance.until_serving().await;
    }
    // gRPC's naming for a fixed list of addresses: what a headless Service's DNS answer
    // holds, without a DNS server of the test's own.
    let targets = format!(
        "ipv4:{}",
        commands
            .iter()
            .map(|c| c.listen().to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut gateway = ServeCommand::new(BINARY, None)
        .with_metrics()
        .env("SALESOPP_SERVICE", "gateway")
        .env("SALESOPP_CUSTOMER_URL", targets.clone())
        .env("SALESOPP_OPPORTUNITY_URL", targets.clone())
        .env("SALESOPP_STATUS_CONFIG_URL", targets)
        .start();
    gateway.until_serving().await;
    let opportunity_id = seed(&instances[0]).await;

    // 1. All three take calls.
    until_ready(&mut gateway, 3).await;
    let before = calls_of_each(&instances).await;
    call_gateway(&gateway, &opportunity_id).await;
    let after = calls_of_each(&instances).await;
    for (n, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a > b,
            "instance {} got none of the gateway's calls: before {before:?}, after {after:?}",
            n + 1
        );
    }

    // 2. One is stopped (SIGTERM, as Kubernetes stops a pod): it drops out, the other two
    //    answer every call.
    instances[1].terminate();
    until_ready(&mut gateway, 2).await;
    let status = instances[1].exit_status(PATIENCE).await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        instances[1].log()
    );
    let survivors = [0, 2];
    let before: Vec<f64> = {
        let mut counts = Vec::new();
        for &n in &survivors {
            counts.push(opportunity_calls(&instances[n]).await);
        }
        counts
    };
    call_gateway(&gateway, &opportunity_id).await;
    for (i, &n) in survivors.iter().enumerate() {
        let now = opportunity_calls(&instances[n]).await;
        assert!(
            now > before[i],
            "instance {} took no calls once instance 2 had stopped",
            n + 1
        );
    }

    // 3. Started again on its address (a new pod), it takes calls again.
    instances[1] = commands[1].start();
    instances[1].until_serving().await;
    until_ready(&mut gateway, 3).await;
    let before = opportunity_calls(&instances[1]).await;
    call_gateway(&gateway, &opportunity_id).await;
    assert!(
        opportunity_calls(&instances[1]).await > before,
        "the restarted instance took none of the gateway's calls"
    );
}

#[tokio::test]
async fn with_no_instance_ready_a_gateway_call_fails_at_once_naming_the_part_and_recovers() {
    let database = TestDatabase::create().await;
    let command = ServeCommand::new(BINARY, Some(&database.url())).on(loopback(1));
    let mut instance = command.start();
    instance.until_serving().await;
    let opportunity_id = seed(&instance).await;
    // A DNS name, resolved by the system's resolver as a headless Service's name would be.
    let target = format!("dns:///localhost:{}", instance.port());
    let mut gateway = ServeCommand::new(BINARY, None)
        .with_metrics()
        .env("SALESOPP_SERVICE", "gateway")
        .env("SALESOPP_RESOLVE_INTERVAL", "200ms")
        .env("SALESOPP_CUSTOMER_URL", target.clone())
        .env("SALESOPP_OPPORTUNITY_URL", target.clone())
        .env("SALESOPP_STATUS_CONFIG_URL", target)
        .start();
    gateway.until_serving().await;
    until_ready(&mut gateway, 1).await;
    instance.terminate();
    instance.exit_status(PATIENCE).await;
    until_ready(&mut gateway, 0).await;
    // No deadline on the call: it must not wait for an instance to come back.
    let status = GatewayServiceClient::new(gateway.connect().await.expect("connect"))
        .get_opportunity_with_history(authed(
            &rep_token(),
            gpb::GetOpportunityWithHistoryRequest {
                opportunity_id: opportunity_id.clone(),
                history_page_size: 0,
            },
        ))
        .await
        .expect_err("no instance is ready");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        salesopp_tests::fixtures::error_reason_in(&status, "gateway.salesopp.io"),
        "DOWNSTREAM_UNAVAILABLE",
        "{status:?}"
    );

    // Back on its address, it is found again and answers.
    let mut instance = command.start();
    instance.until_serving().await;
    until_ready(&mut gateway, 1).await;
    call_gateway(&gateway, &opportunity_id).await;
}
