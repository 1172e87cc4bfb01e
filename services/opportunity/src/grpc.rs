//! The tonic trait of OpportunityService: each call is who may make it, its decoded input
//! and the service function (`salesopp_kit::handle`), given the pool it reads from (`Pools`):
//! the primary for the writes, GetOpportunity (a client reads what it has just written, and
//! the etag it gets is the one its next write is checked against) and the event stream; the
//! read pool for the lists, history, pipeline summary and salespeople.

use std::pin::Pin;
use std::sync::Arc;

use salesopp_kit::db::Pools;
use salesopp_kit::handle;
use salesopp_outbox::Wake;
use salesopp_proto::opportunity::v1 as pb;
use salesopp_proto::opportunity::v1::opportunity_service_server::OpportunityService;
use tonic::{Request, Response, Status};

use crate::events::Feed;
use crate::service;

#[derive(Debug, Clone)]
pub struct Opportunities {
    pools: Pools,
    feed: Feed,
    wake: Wake,
    summaries: Arc<service::SummaryCache>,
}

impl Opportunities {
    /// The service over `pools`, streaming events from `feed` (which reads the primary); each
    /// write wakes the event sequencer through `wake` once it has committed.
    pub fn new(pools: Pools, feed: Feed, wake: Wake) -> Self {
        Self {
            pools,
            feed,
            wake,
            summaries: Arc::default(),
        }
    }
}

type EventStream = Pin<Box<dyn futures::Stream<Item = crate::events::Message> + Send>>;

#[tonic::async_trait]
impl OpportunityService for Opportunities {
    async fn create_opportunity(
        &self,
        request: Request<pb::CreateOpportunityRequest>,
    ) -> Result<Response<pb::Opportunity>, Status> {
        self.wake
            .after(handle::sales(request, async |caller, input| {
                service::create(self.pools.primary(), caller, input).await
            }))
            .await
    }

    async fn batch_create_opportunities(
        &self,
        request: Request<pb::BatchCreateOpportunitiesRequest>,
    ) -> Result<Response<pb::BatchCreateOpportunitiesResponse>, Status> {
        self.wake
            .after(handle::sales(request, async |caller, input| {
                crate::batch::create(self.pools.primary(), caller, input).await
            }))
            .await
    }

    async fn batch_change_opportunity_status(
        &self,
        request: Request<pb::BatchChangeOpportunityStatusRequest>,
    ) -> Result<Response<pb::BatchChangeOpportunityStatusResponse>, Status> {
        self.wake
            .after(handle::sales(request, async |caller, input| {
                crate::batch::change_status(self.pools.primary(), caller, input).await
            }))
            .await
    }

    async fn get_opportunity(
        &self,
        request: Request<pb::GetOpportunityRequest>,
    ) -> Result<Response<pb::Opportunity>, Status> {
        handle::sales(request, async |caller, input| {
            service::get(self.pools.primary(), caller, input).await
        })
        .await
    }

    async fn update_opportunity(
        &self,
        request: Request<pb::UpdateOpportunityRequest>,
    ) -> Result<Response<pb::Opportunity>, Status> {
        self.wake
            .after(handle::sales(request, async |caller, input| {
                service::update(self.pools.primary(), caller, input).await
            }))
            .await
    }

    async fn change_opportunity_status(
        &self,
        request: Request<pb::ChangeOpportunityStatusRequest>,
    ) -> Result<Response<pb::ChangeOpportunityStatusResponse>, Status> {
        self.wake
            .after(handle::sales(request, async |caller, input| {
                service::change_status(self.pools.primary(), caller, input).await
            }))
            .await
    }

    async fn list_opportunities(
        &self,
        request: Request<pb::ListOpportunitiesRequest>,
    ) -> Result<Response<pb::ListOpportunitiesResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::list(self.pools.read(), caller, input).await
        })
        .await
    }

    async fn list_status_history(
        &self,
        request: Request<pb::ListStatusHistoryRequest>,
    ) -> Result<Response<pb::ListStatusHistoryResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::history(self.pools.read(), caller, input).await
        })
        .await
    }

    async fn get_pipeline_summary(
        &self,
        request: Request<pb::GetPipelineSummaryRequest>,
    ) -> Result<Response<pb::GetPipelineSummaryResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::pipeline(self.pools.read(), &self.summaries, caller, input).await
        })
        .await
    }

    async fn list_salespeople(
        &self,
        request: Request<pb::ListSalespeopleRequest>,
    ) -> Result<Response<pb::ListSalespeopleResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::salespeople(self.pools.read(), caller, input).await
        })
        .await
    }

    async fn get_pipeline_velocity(
        &self,
        request: Request<pb::GetPipelineVelocityRequest>,
    ) -> Result<Response<pb::GetPipelineVelocityResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::velocity(self.pools.read(), caller, input).await
        })
        .await
    }

    async fn list_opportunity_changes(
        &self,
        request: Request<pb::ListOpportunityChangesRequest>,
    ) -> Result<Response<pb::ListOpportunityChangesResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::changes(self.pools.read(), caller, input).await
        })
        .await
    }

    async fn get_forecast_summary(
        &self,
        request: Request<pb::GetForecastSummaryRequest>,
    ) -> Result<Response<pb::GetForecastSummaryResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::forecast(self.pools.read(), caller, input).await
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
