//! The tonic trait of OpportunityService: each call is who may make it, its decoded input
//! and the service function (`salesopp_kit::handle`).

use std::pin::Pin;

use salesopp_kit::handle;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::opportunity::v1::opportunity_service_server::OpportunityService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::events::Feed;
use crate::service;

#[derive(Debug, Clone)]
pub struct Opportunities {
    pool: PgPool,
    feed: Feed,
}

impl Opportunities {
    /// The service over `pool`, streaming events from `feed`.
    pub fn new(pool: PgPool, feed: Feed) -> Self {
        Self { pool, feed }
    }
}

type EventStream = Pin<Box<dyn futures::Stream<Item = crate::events::Message> + Send>>;

#[tonic::async_trait]
impl OpportunityService for Opportunities {
    async fn create_opportunity(
        &self,
        request: Request<pb::CreateOpportunityRequest>,
    ) -> Result<Response<pb::Opportunity>, Status> {
        handle::sales(request, async |caller, input| {
            service::create(&self.pool, caller, input).await
        })
        .await
    }

    async fn get_opportunity(
        &self,
        request: Request<pb::GetOpportunityRequest>,
    ) -> Result<Response<pb::Opportunity>, Status> {
        handle::sales(request, async |caller, input| {
            service::get(&self.pool, caller, input).await
        })
        .await
    }

    async fn update_opportunity(
        &self,
        request: Request<pb::UpdateOpportunityRequest>,
    ) -> Result<Response<pb::Opportunity>, Status> {
        handle::sales(request, async |caller, input| {
            service::update(&self.pool, caller, input).await
        })
        .await
    }

    async fn change_opportunity_status(
        &self,
        request: Request<pb::ChangeOpportunityStatusRequest>,
    ) -> Result<Response<pb::ChangeOpportunityStatusResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::change_status(&self.pool, caller, input).await
        })
        .await
    }

    async fn list_opportunities(
        &self,
        request: Request<pb::ListOpportunitiesRequest>,
    ) -> Result<Response<pb::ListOpportunitiesResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::list(&self.pool, caller, input).await
        })
        .await
    }

    async fn list_status_history(
        &self,
        request: Request<pb::ListStatusHistoryRequest>,
    ) -> Result<Response<pb::ListStatusHistoryResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::history(&self.pool, caller, input).await
        })
        .await
    }

    async fn get_pipeline_summary(
        &self,
        request: Request<pb::GetPipelineSummaryRequest>,
    ) -> Result<Response<pb::GetPipelineSummaryResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::pipeline(&self.pool, caller, input).await
        })
        .await
    }

    async fn list_salespeople(
        &self,
        request: Request<pb::ListSalespeopleRequest>,
    ) -> Result<Response<pb::ListSalespeopleResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::salespeople(&self.pool, caller, input).await
        })
        .await
    }

    async fn get_pipeline_velocity(
        &self,
        request: Request<pb::GetPipelineVelocityRequest>,
    ) -> Result<Response<pb::GetPipelineVelocityResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::velocity(&self.pool, caller, input).await
        })
        .await
    }

    type WatchOpportunityEventsStream = EventStream;

    async fn watch_opportunity_events(
        &self,
        request: Request<pb::WatchOpportunityEventsRequest>,
    ) -> Result<Response<Self::WatchOpportunityEventsStream>, Status> {
        handle::sales(request, async |caller, watch| {
            let receiver = self.feed.open(caller, watch).await?;
            let stream: EventStream =
                Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver));
            Ok::<_, Status>(stream)
        })
        .await
    }
}
