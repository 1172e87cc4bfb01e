//! The tonic trait of OpportunityService: decode, call the service function, encode.

use std::pin::Pin;

use salesopp_kit::Principal;
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
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::create(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn get_opportunity(
        &self,
        request: Request<pb::GetOpportunityRequest>,
    ) -> Result<Response<pb::Opportunity>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        let id =
            salesopp_kit::ids::uuid_field("id", &request.get_ref().id, "the opportunity's id")?;
        Ok(Response::new(service::get(&self.pool, caller, id).await?))
    }

    async fn update_opportunity(
        &self,
        request: Request<pb::UpdateOpportunityRequest>,
    ) -> Result<Response<pb::Opportunity>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::update(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn change_opportunity_status(
        &self,
        request: Request<pb::ChangeOpportunityStatusRequest>,
    ) -> Result<Response<pb::ChangeOpportunityStatusResponse>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::change_status(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn list_opportunities(
        &self,
        request: Request<pb::ListOpportunitiesRequest>,
    ) -> Result<Response<pb::ListOpportunitiesResponse>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::list(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn list_status_history(
        &self,
        request: Request<pb::ListStatusHistoryRequest>,
    ) -> Result<Response<pb::ListStatusHistoryResponse>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::history(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn get_pipeline_summary(
        &self,
        request: Request<pb::GetPipelineSummaryRequest>,
    ) -> Result<Response<pb::GetPipelineSummaryResponse>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::pipeline(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn list_salespeople(
        &self,
        request: Request<pb::ListSalespeopleRequest>,
    ) -> Result<Response<pb::ListSalespeopleResponse>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::salespeople(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    type WatchOpportunityEventsStream = EventStream;

    async fn watch_opportunity_events(
        &self,
        request: Request<pb::WatchOpportunityEventsRequest>,
    ) -> Result<Response<Self::WatchOpportunityEventsStream>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        let visibility = crate::domain::Visibility::of(caller);
        let watch = crate::events::watch_request(visibility, request.get_ref())?;
        let receiver = self.feed.open(&caller.id, watch).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
