//! The tonic trait of StatusConfigService: decode, call the service function, encode.

use salesopp_kit::Principal;
use salesopp_kit::idempotency::{Retry, parse_request_id};
use salesopp_proto::statusconfig::v1 as pb;
use salesopp_proto::statusconfig::v1::status_config_service_server::StatusConfigService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{convert, service};

#[derive(Debug, Clone)]
pub struct StatusConfig {
    pool: PgPool,
}

impl StatusConfig {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn optional(etag: &str) -> Option<&str> {
    (!etag.is_empty()).then_some(etag)
}

#[tonic::async_trait]
impl StatusConfigService for StatusConfig {
    async fn list_statuses(
        &self,
        request: Request<pb::ListStatusesRequest>,
    ) -> Result<Response<pb::ListStatusesResponse>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        Ok(Response::new(
            service::list(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::OpportunityStatus>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.sales()?;
        let id = salesopp_kit::ids::uuid_field("id", &request.get_ref().id, "a status id")?;
        Ok(Response::new(service::get(&self.pool, caller, id).await?))
    }

    async fn create_status(
        &self,
        request: Request<pb::CreateStatusRequest>,
    ) -> Result<Response<pb::OpportunityStatus>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.admin()?;
        Ok(Response::new(
            service::create(&self.pool, caller, request.get_ref()).await?,
        ))
    }

    async fn update_status(
        &self,
        request: Request<pb::UpdateStatusRequest>,
    ) -> Result<Response<pb::OpportunityStatus>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.admin()?;
        let body = request.get_ref();
        let (id, etag, patch) = convert::status_patch(body)?;
        let retry = Retry::new("UpdateStatus", &body.request_id, body);
        Ok(Response::new(
            service::update(&self.pool, caller, retry, id, etag.as_deref(), patch).await?,
        ))
    }

    async fn delete_status(
        &self,
        request: Request<pb::DeleteStatusRequest>,
    ) -> Result<Response<pb::DeleteStatusResponse>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.admin()?;
        let body = request.get_ref();
        let id = salesopp_kit::ids::uuid_field("id", &body.id, "a status id")?;
        let replacement = match body.replacement_status_id.as_str() {
            "" => None,
            raw => Some(salesopp_kit::ids::uuid_field(
                "replacement_status_id",
                raw,
                "a status id",
            )?),
        };
        parse_request_id(&body.request_id)?;
        let retry = Retry::new("DeleteStatus", &body.request_id, body);
        let etag = optional(&body.etag);
        Ok(Response::new(
            service::delete(&self.pool, caller, retry, id, replacement, etag).await?,
        ))
    }

    async fn set_default_status(
        &self,
        request: Request<pb::SetDefaultStatusRequest>,
    ) -> Result<Response<pb::OpportunityStatus>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.admin()?;
        let body = request.get_ref();
        let id = salesopp_kit::ids::uuid_field("id", &body.id, "a status id")?;
        parse_request_id(&body.request_id)?;
        let retry = Retry::new("SetDefaultStatus", &body.request_id, body);
        Ok(Response::new(
            service::set_default(&self.pool, caller, retry, id, optional(&body.etag)).await?,
        ))
    }

    async fn reorder_statuses(
        &self,
        request: Request<pb::ReorderStatusesRequest>,
    ) -> Result<Response<pb::ReorderStatusesResponse>, Status> {
        let principal = Principal::of(&request)?;
        let caller = principal.admin()?;
        let body = request.get_ref();
        let ids = convert::reorder_ids(body)?;
        let retry = Retry::new("ReorderStatuses", &body.request_id, body);
        Ok(Response::new(
            service::reorder(&self.pool, caller, retry, &ids).await?,
        ))
    }
}
