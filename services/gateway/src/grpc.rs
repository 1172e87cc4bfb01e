//! The tonic trait of GatewayService: capture the caller's context, compose, and answer
//! DEADLINE_EXCEEDED when the caller's deadline passes first.

use std::collections::HashMap;
use std::time::Duration;

use salesopp_kit::Principal;
use salesopp_kit::error::{self, Reason};
use salesopp_kit::trace::ClientTraceLayer;
use salesopp_proto::customer::v1::customer_service_client::CustomerServiceClient;
use salesopp_proto::customer::v1::customer_service_server;
use salesopp_proto::gateway::v1 as pb;
use salesopp_proto::gateway::v1::gateway_service_server::GatewayService;
use salesopp_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use salesopp_proto::opportunity::v1::opportunity_service_server;
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use salesopp_proto::statusconfig::v1::status_config_service_server;
use tonic::{Request, Response, Status};

use crate::balance::{DEFAULT_RESOLVE_INTERVAL, Instances, Target};
use crate::compose::{Clients, Downstream};
use crate::forward::Forward;

/// Where the three services are: each a URL of the forms `balance` takes
/// (`http://host:port`, `dns:///host:port`, `ipv4:ip:port,...`).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub customer: String,
    pub opportunity: String,
    pub status_config: String,
}

#[derive(Debug, Clone)]
pub struct Gateway {
    clients: Clients,
}

impl Gateway {
    /// Starts watching the services' instances (DNS names resolved again every
    /// [`DEFAULT_RESOLVE_INTERVAL`]); no call waits for a service that is not up yet. Must be
    /// called within a Tokio runtime.
    pub fn connect_lazy(endpoints: &Endpoints) -> anyhow::Result<Gateway> {
        Self::connect_with(endpoints, DEFAULT_RESOLVE_INTERVAL)
    }

    /// As [`Gateway::connect_lazy`], resolving DNS names again every `resolve_interval`.
    pub fn connect_with(
        endpoints: &Endpoints,
        resolve_interval: Duration,
    ) -> anyhow::Result<Gateway> {
        // Every call on a service's instances in a client span of its own.
        let instances = |service, label, url: &str| -> anyhow::Result<Downstream> {
            let instances = Instances::watch(service, label, Target::parse(url)?, resolve_interval);
            Ok(tower::Layer::layer(&ClientTraceLayer, instances))
        };
        Ok(Gateway {
            clients: Clients {
                customers: CustomerServiceClient::new(instances(
                    customer_service_server::SERVICE_NAME,
                    "customer",
                    &endpoints.customer,
                )?),
                opportunities: OpportunityServiceClient::new(instances(
                    opportunity_service_server::SERVICE_NAME,
                    "opportunity",
                    &endpoints.opportunity,
                )?),
                statuses: StatusConfigServiceClient::new(instances(
                    status_config_service_server::SERVICE_NAME,
                    "status-config",
                    &endpoints.status_config,
                )?),
            },
        })
    }
}

/// How much earlier than the caller's deadline the gateway gives up.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// Runs `work` within the caller's deadline.
async fn within<T>(
    forward: &Forward,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    // A little before the caller's deadline, so the caller hears DEADLINE_EXCEEDED from the
    // gateway rather than the transport's own cancellation at the deadline itself.
    match forward.remaining() {
        Some(remaining) => tokio::time::timeout(remaining.saturating_sub(DEADLINE_MARGIN), work)
            .await
            .unwrap_or_else(|_| {
                Err(error::status(
                    Reason::DeadlineExceeded,
                    "the caller's deadline passed before the parts answered",
                    error::error_info(Reason::DeadlineExceeded, HashMap::new()),
                ))
            }),
        None => work.await,
    }
}

#[tonic::async_trait]
impl GatewayService for Gateway {
    async fn get_opportunity_with_history(
        &self,
        request: Request<pb::GetOpportunityWithHistoryRequest>,
    ) -> Result<Response<pb::GetOpportunityWithHistoryResponse>, Status> {
        Principal::of(&request)?.require_sales_role()?;
        let forward = Forward::capture(&request);
        let body = request.into_inner();
        within(
            &forward,
            self.clients.opportunity_with_history(&forward, body),
        )
        .await
        .map(Response::new)
    }

    async fn get_customer_overview(
        &self,
        request: Request<pb::GetCustomerOverviewRequest>,
    ) -> Result<Response<pb::GetCustomerOverviewResponse>, Status> {
        Principal::of(&request)?.require_sales_role()?;
        let forward = Forward::capture(&request);
        let body = request.into_inner();
        within(&forward, self.clients.customer_overview(&forward, body))
            .await
            .map(Response::new)
    }

    async fn get_salesperson_pipeline(
        &self,
        request: Request<pb::GetSalespersonPipelineRequest>,
    ) -> Result<Response<pb::GetSalespersonPipelineResponse>, Status> {
        let caller = Principal::of(&request)?;
        caller.require_sales_role()?;
        let forward = Forward::capture(&request);
        let body = request.into_inner();
        within(
            &forward,
            self.clients.salesperson_pipeline(&forward, &caller, body),
        )
        .await
        .map(Response::new)
    }
}
