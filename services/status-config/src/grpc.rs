//! The tonic trait of StatusConfigService: each call is who may make it, its decoded input
//! and the service function (`salesopp_kit::handle`), given the pool it reads from: the
//! primary for the writes and GetStatus, the read pool for the list (`Pools`).

use salesopp_kit::db::Pools;
use salesopp_kit::handle;
use salesopp_outbox::Wake;
use salesopp_proto::statusconfig::v1 as pb;
use salesopp_proto::statusconfig::v1::status_config_service_server::StatusConfigService;
use tonic::{Request, Response, Status};

use crate::service;

#[derive(Debug, Clone)]
pub struct StatusConfig {
    pools: Pools,
    wake: Wake,
}

impl StatusConfig {
    /// The service over `pools`; a status deletion that moves opportunities (R6) wakes the
    /// event sequencer through `wake` once it has committed.
    pub fn new(pools: Pools, wake: Wake) -> Self {
        Self { pools, wake }
    }
}

#[tonic::async_trait]
impl StatusConfigService for StatusConfig {
    async fn list_statuses(
        &self,
        request: Request<pb::ListStatusesRequest>,
    ) -> Result<Response<pb::ListStatusesResponse>, Status> {
        handle::sales(request, async |caller, input| {
            service::list(self.pools.read(), caller, input).await
        })
        .await
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::OpportunityStatus>, Status> {
        handle::sales(request, async |caller, input| {
            // On the primary: an admin reads the status they have just configured, and the
            // etag they get is the one their next update is checked against.
            service::get(self.pools.primary(), caller, input).await
        })
        .await
    }

    async fn create_status(
        &self,
        request: Request<pb::CreateStatusRequest>,
    ) -> Result<Response<pb::OpportunityStatus>, Status> {
        handle::admin(request, async |caller, input| {
            service::create(self.pools.primary(), caller, input).await
        })
        .await
    }

    async fn update_status(
        &self,
        request: Request<pb::UpdateStatusRequest>,
    ) -> Result<Response<pb::OpportunityStatus>, Status> {
        handle::admin(request, async |caller, input| {
            service::update(self.pools.primary(), caller, input).await
        })
        .await
    }

    async fn delete_status(
        &self,
        request: Request<pb::DeleteStatusRequest>,
    ) -> Result<Response<pb::DeleteStatusResponse>, Status> {
        self.wake
            .after(handle::admin(request, async |caller, input| {
                service::delete(self.pools.primary(), caller, input).await
            }))
            .await
    }

    async fn set_default_status(
        &self,
        request: Request<pb::SetDefaultStatusRequest>,
    ) -> Result<Response<pb::OpportunityStatus>, Status> {
        handle::admin(request, async |caller, input| {
            service::set_default(self.pools.primary(), caller, input).await
        })
        .await
    }

    async fn reorder_statuses(
        &self,
        request: Request<pb::ReorderStatusesRequest>,
    ) -> Result<Response<pb::ReorderStatusesResponse>, Status> {
        handle::admin(request, async |caller, input| {
            service::reorder(self.pools.primary(), caller, input).await
        })
        .await
    }
}
